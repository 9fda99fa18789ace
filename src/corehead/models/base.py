"""What every model adapter provides: encoded inputs with an exact visual-token map, batching, generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from corehead.data.sample import Region, Sample, SampleError


@dataclass
class VisualTokenMap:
    """For each visual token of one encoded input: where it sits and which pixels it covers.

    Arrays, one row per visual token, in sequence order. `cells` are (x0, y0, x1, y1) in the unit's
    original pixel coordinates, after undoing the processor's resize. A video token covers
    `spans[i]` consecutive units starting at `units[i]` (the frames of one temporal patch).
    """

    positions: np.ndarray  # [N] int64, index in the token sequence
    units: np.ndarray  # [N] int64, first unit covered
    spans: np.ndarray  # [N] int64, number of consecutive units covered (1 for images and pages)
    cells: np.ndarray  # [N, 4] float64

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def covers_unit(self, unit: int) -> np.ndarray:
        """Boolean mask of the tokens that cover `unit` (a video token covers its whole frame pair)."""
        return (self.units <= unit) & (unit < self.units + self.spans)

    def region_tokens(self, region: Region, min_overlap: float = 0.5) -> tuple[np.ndarray, bool]:
        """Indices into this map of the tokens covering `region`, and whether the fallback was used.

        A token belongs to a box region when at least `min_overlap` of its cell lies inside the box; a
        whole-unit region takes all the unit's tokens. A box too small or thin for any cell to pass falls
        back to the cells it overlaps most: the best cell, and any other cell with at least half the best
        cell's overlap (so a thin text line straddling two cell rows keeps its whole width). A region
        overlapping no token raises ValueError.
        """
        on_unit = np.flatnonzero(self.covers_unit(region.unit))
        if region.box is None or len(on_unit) == 0:
            if len(on_unit) == 0:
                raise ValueError(f"no visual token covers unit {region.unit} (was it capped away?)")
            return on_unit, False
        x0, y0, x1, y1 = region.box
        c = self.cells[on_unit]
        inter = np.clip(np.minimum(c[:, 2], x1) - np.maximum(c[:, 0], x0), 0, None) * np.clip(
            np.minimum(c[:, 3], y1) - np.maximum(c[:, 1], y0), 0, None
        )
        share = inter / ((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1]))
        inside = on_unit[share >= min_overlap]
        if len(inside):
            return inside, False
        if share.max() <= 0:
            raise ValueError(f"box {list(region.box)} overlaps no visual token of unit {region.unit}")
        return on_unit[share >= 0.5 * share.max()], True

    def shifted(self, offset: int) -> VisualTokenMap:
        """The same map for a sequence with `offset` tokens prepended (left padding)."""
        return VisualTokenMap(self.positions + offset, self.units, self.spans, self.cells)


@dataclass
class Encoded:
    """One sample as model inputs (batch of one), with the positions analyses need."""

    inputs: dict[str, torch.Tensor]
    token_map: VisualTokenMap
    question: np.ndarray  # positions of the question's tokens
    prompt_end: int  # position of the last prompt token (the one that predicts the first answer token)
    answer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # gold answer tokens

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


class ModelAdapter(Protocol):
    """A loaded vision-language model and the knowledge of how it sees pixels."""

    model: Any
    name: str
    family: str

    def encode(self, sample: Sample, answer: bool = False) -> Encoded:
        """Inputs for one sample; with `answer`, the gold answer follows the prompt (teacher forcing)."""
        ...

    def collate(self, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-padded batch of encoded samples."""
        ...

    def generate(self, samples: list[Sample], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers, one per sample."""
        ...


@dataclass
class RegionTokens:
    """The visual tokens of a sample's regions (indices into its token map), and how they were found."""

    indices: np.ndarray
    fallbacks: int  # regions too small for any cell to pass the overlap threshold


def sample_region_tokens(
    sample: Sample, token_map: VisualTokenMap, regions: list[Region] | None = None, min_overlap: float = 0.5
) -> RegionTokens:
    """Union of the tokens of `regions` (default: the sample's evidence regions); errors name the sample."""
    chosen = sample.regions if regions is None else regions
    parts, fallbacks = [], 0
    for k, region in enumerate(chosen):
        try:
            idx, fell_back = token_map.region_tokens(region, min_overlap)
        except ValueError as exc:
            raise SampleError(sample.id, f"regions[{k}]", str(exc)) from None
        parts.append(idx)
        fallbacks += int(fell_back)
    indices = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    return RegionTokens(indices, fallbacks)

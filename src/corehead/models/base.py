"""What every model adapter provides: encoded inputs with an exact visual-token map, batching, generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from corehead.data.sample import Sample


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

"""Regions as weights over an encoded sample's visual tokens: what RAM and distractor mass are summed with.

Two weightings of a token j for a region (the union of its boxes, e.g. one per frame of a tube):
- `binary` (default): w_j = 1 when the token belongs to the region by the overlap rule of
  `VisualTokenMap.region_tokens` (at least `min_overlap` of its cell inside a box; a box too small for any
  cell falls back to its best-overlapping cells, counted as a fallback), else 0;
- `fractional`: w_j = the largest share of the token's cell inside any one of the region's boxes (1 for a
  whole-unit region), so a cell half inside counts half; no threshold, so nothing falls back.

Distractor weights are the mean over distractor objects of each object's weights (`objects`: regions
sharing an `object` id form one object; a region without one is an object of its own), so the distractor
mass sum_j A_j w_j is the mean over objects of each object's attention mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corehead.data.sample import Region, Sample, SampleError, objects
from corehead.models.base import VisualTokenMap

WEIGHTINGS: tuple[str, ...] = ("binary", "fractional")


@dataclass
class RegionWeights:
    """Per visual token weights [N] in [0, 1], and how many regions were mapped and fell back."""

    weights: np.ndarray
    regions: int = 0
    fallbacks: int = 0  # regions too small for any cell to pass the overlap threshold (binary only)


def region_weights(
    sample: Sample,
    token_map: VisualTokenMap,
    min_overlap: float = 0.5,
    weighting: str = "binary",
) -> RegionWeights:
    """The weights of the sample's evidence regions (their union); errors name the sample and the region."""
    return _weights(sample, token_map, "regions", list(range(len(sample.regions))), min_overlap, weighting)


def distractor_weights(
    sample: Sample,
    token_map: VisualTokenMap,
    min_overlap: float = 0.5,
    weighting: str = "binary",
) -> RegionWeights:
    """The mean over the sample's distractor objects of each object's weights (zeros without distractors)."""
    total = RegionWeights(np.zeros(len(token_map)))
    groups = objects(sample.distractors)
    for group in groups:
        one = _weights(sample, token_map, "distractors", group, min_overlap, weighting)
        total.weights += one.weights / len(groups)
        total.regions += one.regions
        total.fallbacks += one.fallbacks
    return total


def _weights(
    sample: Sample, token_map: VisualTokenMap, group: str, indices: list[int], min_overlap: float, weighting: str
) -> RegionWeights:
    """Weights of the union of the regions `getattr(sample, group)[indices]`."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"region weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    weights = np.zeros(len(token_map))
    fallbacks = 0
    for k in indices:
        region: Region = getattr(sample, group)[k]
        try:
            if weighting == "binary":
                tokens, fell_back = token_map.region_tokens(region, min_overlap)
                weights[tokens] = 1.0
                fallbacks += int(fell_back)
            else:
                tokens, share = token_map.cell_shares(region)
                weights[tokens] = np.maximum(weights[tokens], share)
        except ValueError as exc:
            raise SampleError.of(sample, f"{group}[{k}]", str(exc)) from None
    return RegionWeights(weights, len(indices), fallbacks)

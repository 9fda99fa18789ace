"""Retrieval Attention Mass and the per-head statistics stored beside it (definitions: MISSION.md).

Inputs are a head's attention maps over the visual tokens, already averaged over the query rows of a group
(question, prompt end, answer, ...). Because RAM = mean_i sum_{j in R} A[i, j] = sum_{j in R} mean_i A[i, j],
averaging rows first loses nothing.

Regions enter as weights w_j in [0, 1] per visual token j (models/regions.py). With the default `binary`
weighting w_j is 1 on the region's tokens and 0 elsewhere, and every statistic below is the familiar one;
with `fractional` weighting w_j is the share of token j's cell inside the region's box, and
- ram = sum_j A_j w_j;
- region_share = ram / visual_mass;
- lift = region_share / (sum_j w_j / N): the share of the head's visual mass on the region over the
  region's (weighted) share of the N visual tokens, 1 for a head that spreads its mass evenly;
- top_in_region = w_top, the weight of the head's most attended visual token (its indicator when binary).
Distractor weights are already the mean over distractor objects of each object's weights, so
distractor_mass = sum_j A_j d_j is the mean over objects of each object's mass.
"""

from __future__ import annotations

import torch

STATS: tuple[str, ...] = (
    "ram",  # attention mass on the region's visual tokens
    "visual_mass",  # attention mass on all visual tokens
    "region_share",  # ram / visual_mass: where the head looks when it looks at the image
    "lift",  # region_share / the region's share of the visual tokens (1 = no preference)
    "entropy",  # entropy (nats) of the head's map over the visual tokens, normalized to sum 1
    "top_in_region",  # weight of the head's most attended visual token (1 / 0 when binary: it is a region token)
    "distractor_mass",  # mean over distractor objects of the mass on each object (0 when the sample has none)
    "ram_minus_distractor",  # ram - distractor_mass: a head that looks at every object scores ~0
)


def head_stats(
    maps: torch.Tensor, valid: torch.Tensor, region: torch.Tensor, distractors: torch.Tensor
) -> torch.Tensor:
    """Per-head statistics from visual attention maps.

    maps: [B, H, G, N] attention mass on each of N visual token slots per row group; valid: [B, N] bool,
    slots that hold a visual token (samples differ in length); region: [B, N] the region's weight on each
    token; distractors: [B, N] the distractor weights (mean over objects). Returns [B, H, G, len(STATS)].
    """
    maps = maps.float() * valid[:, None, None, :]
    weights = region.float() * valid
    ram = (maps * weights[:, None, None, :]).sum(-1)
    visual = maps.sum(-1)
    share = ram / visual.clamp_min(1e-12)
    area = weights.sum(-1) / valid.float().sum(-1).clamp_min(1.0)
    lift = share / area[:, None, None].clamp_min(1e-12)
    p = maps / visual[..., None].clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    top = maps.argmax(-1)
    top_in = weights.gather(1, top.flatten(1)).view_as(top)
    dist = (maps * (distractors.float() * valid)[:, None, None, :]).sum(-1)
    return torch.stack([ram, visual, share, lift, entropy, top_in, dist, ram - dist], dim=-1)

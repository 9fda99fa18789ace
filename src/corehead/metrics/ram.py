"""Retrieval Attention Mass and the per-head statistics stored beside it (definitions: MISSION.md).

Inputs are a head's attention maps over the visual tokens, already averaged over the query rows of a group
(question, prompt end, answer, ...). Because RAM = mean_i sum_{j in R} A[i, j] = sum_{j in R} mean_i A[i, j],
averaging rows first loses nothing.
"""

from __future__ import annotations

import torch

STATS: tuple[str, ...] = (
    "ram",  # attention mass on the region's visual tokens
    "visual_mass",  # attention mass on all visual tokens
    "region_share",  # ram / visual_mass: where the head looks when it looks at the image
    "lift",  # region_share / the region's share of the visual tokens (1 = no preference)
    "entropy",  # entropy (nats) of the head's map over the visual tokens, normalized to sum 1
    "top_in_region",  # 1 when the head's most attended visual token is a region token
    "distractor_mass",  # mean attention mass on one distractor region (0 when the sample has none)
    "ram_minus_distractor",  # ram - distractor_mass: a head that looks at every object scores ~0
)


def head_stats(
    maps: torch.Tensor,
    valid: torch.Tensor,
    region: torch.Tensor,
    distractors: torch.Tensor,
    n_distractors: torch.Tensor,
) -> torch.Tensor:
    """Per-head statistics from visual attention maps.

    maps: [B, H, G, N] attention mass on each of N visual token slots per row group; valid: [B, N] bool,
    slots that hold a visual token (samples differ in length); region: [B, N] bool, the region's tokens;
    distractors: [B, N] bool, the tokens of all distractor regions; n_distractors: [B] how many distractor
    regions. Returns [B, H, G, len(STATS)].
    """
    maps = maps.float() * valid[:, None, None, :]
    region_f = region[:, None, None, :].float()
    ram = (maps * region_f).sum(-1)
    visual = maps.sum(-1)
    share = ram / visual.clamp_min(1e-12)
    area = region.float().sum(-1) / valid.float().sum(-1).clamp_min(1.0)
    lift = share / area[:, None, None].clamp_min(1e-12)
    p = maps / visual[..., None].clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    top = maps.argmax(-1)
    top_in = region.gather(1, top.flatten(1)).view_as(top).float()
    dist = (maps * distractors[:, None, None, :].float()).sum(-1) / n_distractors[:, None, None].clamp_min(1).float()
    return torch.stack([ram, visual, share, lift, entropy, top_in, dist, ram - dist], dim=-1)

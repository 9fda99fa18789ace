"""DuoAttention's streaming heads as a selector: a few first visual tokens (sinks) plus the last ones."""

from __future__ import annotations

import torch

from corehead.attention.selectors import SELECTORS, ScoringSelector


@SELECTORS.register("recent", order=2)
class Recent(ScoringSelector):
    """The first `plan.sink` visual tokens, then the most recent ones: the same for every KV head."""

    def scores(self) -> torch.Tensor:
        p = self.prefill
        b, _, length, _ = p.query.shape
        order = torch.cumsum(p.visual.long(), dim=1).float()  # visual rank, 1-based
        score = order + (order <= p.plan.sink).float() * 1e9
        return score[:, None].expand(b, p.n_kv_heads, length)

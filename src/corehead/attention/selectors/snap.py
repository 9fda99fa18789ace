"""SnapKV's selector: what the last prompt rows attend to, per KV head, pooled over neighbouring tokens."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from corehead.attention.selectors import SELECTORS, ScoringSelector


@SELECTORS.register("snap", order=0)
class Snap(ScoringSelector):
    """Attention of the last `plan.window` prompt rows, averaged over the GQA group, pooled over
    `plan.pool` neighbouring tokens."""

    def scores(self) -> torch.Tensor:
        p = self.prefill
        b, _, length, _ = p.query.shape
        probs = p.last_rows_attention(min(p.plan.window, length))
        grouped = probs.view(b, p.n_kv_heads, p.groups, length).mean(2)
        pad = p.plan.pool // 2
        return F.avg_pool1d(grouped, p.plan.pool, stride=1, padding=pad, count_include_pad=False)

"""FastV's ranking as a selector: the last prompt row's attention, one ranking for the whole layer."""

from __future__ import annotations

import torch

from corehead.attention.selectors import SELECTORS, ScoringSelector


@SELECTORS.register("last", order=3)
class Last(ScoringSelector):
    """The last prompt row's attention averaged over all heads of the layer."""

    def scores(self) -> torch.Tensor:
        p = self.prefill
        b, _, length, _ = p.query.shape
        return p.last_rows_attention(1).mean(1, keepdim=True).expand(b, p.n_kv_heads, length)

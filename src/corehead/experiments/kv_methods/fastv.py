"""`fastv`: the first layers keep everything; every KV head of the later layers keeps the same top visual
tokens by the last prompt row's attention (FastV's ranking, applied to the cache)."""

from __future__ import annotations

import numpy as np

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("fastv", order=3)
class FastV(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        n_layers = kv.shape.n_layers
        first = max(1, round(2 * n_layers / 32))  # FastV prunes after layer 2 of 32
        share = float(np.clip((kv.target * n_layers - first) / max(1, n_layers - first), 0.0, 1.0))
        return KVPlan({(lay, j): share for lay, j in kv.every if lay >= first}, "last", prefill=kv.prefill)

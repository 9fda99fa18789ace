"""`sparsemm`: per-KV-head shares proportional to the heads' scores (SparseMM-style)."""

from __future__ import annotations

import numpy as np

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("sparsemm", order=7)
class SparseMM(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        return KVPlan(proportional(kv.scores, kv.target), "snap", prefill=kv.prefill)


def proportional(scores: np.ndarray, target: float) -> dict[tuple[int, int], float]:
    """Shares proportional to the scores with mean `target`, capped at 1 (the excess goes to the others)."""
    weights = np.clip(scores.astype(float), 1e-9, None).ravel()
    share = np.zeros_like(weights)
    capped = np.zeros_like(weights, dtype=bool)
    for _ in range(len(weights)):
        left = target * len(weights) - capped.sum()
        share[~capped] = left * weights[~capped] / weights[~capped].sum()
        over = (share > 1.0) & ~capped
        if not over.any():
            break
        capped |= over
        share[capped] = 1.0
    n_kv = scores.shape[1]
    return {(i // n_kv, i % n_kv): float(min(1.0, s)) for i, s in enumerate(share)}

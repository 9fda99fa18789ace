"""`random`: as `core`, with as many KV heads drawn at random (seeded) in place of the CoRe ones."""

from __future__ import annotations

import numpy as np

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("random", order=4)
class RandomHeads(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        every = kv.every
        pick = np.random.default_rng(kv.seed).choice(len(every), size=len(kv.core), replace=False)
        return kv.full_for({every[int(i)] for i in pick})

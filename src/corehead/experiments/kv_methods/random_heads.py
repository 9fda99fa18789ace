"""`random`: as `core`, with as many KV heads drawn at random (seeded) from those serving no CoRe head in
place of the CoRe ones, so a draw never keeps a CoRe KV head whole by chance."""

from __future__ import annotations

import numpy as np

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("random", order=4)
class RandomHeads(KVMethod):
    drawn = True

    def plan(self, kv: KVBudget) -> KVPlan | None:
        others = [head for head in kv.every if head not in kv.core]
        if len(others) < len(kv.core):
            raise ValueError(
                f"random: the CoRe heads use {len(kv.core)} of {len(kv.every)} KV heads, leaving {len(others)} to "
                f"draw as many from; select fewer CoRe heads"
            )
        pick = np.random.default_rng(kv.seed).choice(len(others), size=len(kv.core), replace=False)
        return kv.full_for({others[int(i)] for i in sorted(pick)})

"""`bottom`: as `core`, with as many of the lowest-scored KV heads in place of the CoRe ones."""

from __future__ import annotations

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("bottom", order=5)
class Bottom(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        by_score = sorted(kv.every, key=lambda head: kv.scores[head])
        return kv.full_for(set(by_score[: len(kv.core)]))

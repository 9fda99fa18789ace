"""`full`: the model as is (native attention, dense cache)."""

from __future__ import annotations

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("full", order=0)
class Full(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        return None

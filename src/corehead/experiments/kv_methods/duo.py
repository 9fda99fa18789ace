"""`duo`: CoRe KV heads keep everything, the others a few first and the last visual tokens (DuoAttention's
sink + recent streaming heads)."""

from __future__ import annotations

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("duo", order=6)
class Duo(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        return kv.full_for(kv.core, "recent")

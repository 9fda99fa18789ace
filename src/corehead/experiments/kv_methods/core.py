"""`core`: KV heads serving a CoRe head keep every visual token, the others `budget` of them (SnapKV's
selection)."""

from __future__ import annotations

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("core", order=1)
class Core(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        return kv.full_for(kv.core)

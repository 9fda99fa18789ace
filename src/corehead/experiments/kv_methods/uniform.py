"""`uniform`: every KV head keeps the same share of the visual tokens (SnapKV-style)."""

from __future__ import annotations

from corehead.attention.hybrid import KVPlan
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, KVMethod


@KV_METHODS.register("uniform", order=2)
class Uniform(KVMethod):
    def plan(self, kv: KVBudget) -> KVPlan | None:
        return KVPlan({head: kv.target for head in kv.every}, "snap", prefill=kv.prefill)

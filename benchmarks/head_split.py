"""The head split the hybrid benchmarks measure (acceleration, scale, vs_kvpress): KV heads 0 and 1 of every
layer keep every token (the CoRe KV heads, 25% of 8), every other KV head keeps `budget` of the visual tokens.
Importing this module does not import corehead (vs_kvpress's side environment reads CORE_KV)."""

from __future__ import annotations

from typing import Any

CORE_KV = (0, 1)  # KV heads kept whole in every layer


def split_plan(layers: int, kv_heads: int, budget: float, selector: str = "snap", **options: Any) -> Any:
    """The KVPlan of that split over `layers` layers of `kv_heads` KV heads (`options`: KVPlan's others)."""
    from corehead.attention.hybrid import KVPlan

    budgets = {(lay, j): budget for lay in range(layers) for j in range(kv_heads) if j not in CORE_KV}
    return KVPlan(budgets, selector, **options)

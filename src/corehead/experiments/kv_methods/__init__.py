"""KV compression methods compared by `accelerate`: one small class per method, one file each, registered
by name (kvpress style). Every method plans per-(layer, KV head) visual budgets for the hybrid KV cache
(corehead.attention.hybrid) at the same total visual KV share as `core`. Adding a method is one new file
in this package:

    @KV_METHODS.register("my-method", order=8)
    class MyMethod(KVMethod):
        def plan(self, kv):
            return KVPlan({head: kv.target for head in kv.every}, "recent", prefill=kv.prefill)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from corehead.attention.hybrid import KVPlan, kv_fraction
from corehead.heads import HeadSet
from corehead.models.shape import ModelShape
from corehead.registry import Registry

KVHead = tuple[int, int]  # (layer, KV head)


@dataclass(frozen=True)
class KVBudget:
    """What every method plans from: the model's shape, the KV heads serving CoRe heads, their scores
    ([layers, KV heads], summed over each KV head's query heads), the budget of the other KV heads and
    `target`, the total visual KV share that keeping the CoRe KV heads whole at that budget comes to."""

    shape: ModelShape
    core: frozenset[KVHead]
    scores: np.ndarray
    budget: float
    target: float
    seed: int
    prefill: bool

    @classmethod
    def of(cls, shape: ModelShape, headset: HeadSet, budget: float, seed: int, prefill: bool) -> KVBudget:
        core = frozenset((layer, h // shape.groups) for layer, h in headset.selected)
        every = shape.kv_heads()
        snap = KVPlan({kv: budget for kv in every if kv not in core}, "snap")
        target = kv_fraction(snap, shape.n_layers, shape.n_kv_heads)
        return cls(shape, core, headset.kv_scores("sum"), budget, target, seed, prefill)

    @property
    def every(self) -> list[KVHead]:
        return self.shape.kv_heads()

    def full_for(self, full: AbstractSet[KVHead], selector: str = "snap") -> KVPlan:
        """`full` KV heads keep every visual token, the others `budget` of them."""
        return KVPlan({kv: self.budget for kv in self.every if kv not in full}, selector, prefill=self.prefill)


class KVMethod(ABC):
    """A way of spending the visual KV budget over the (layer, KV head) pairs. A `drawn` method plans from
    a random draw (seeded by `KVBudget.seed`): `accelerate` runs several draws of it, each its own rows."""

    name: ClassVar[str]
    drawn: ClassVar[bool] = False

    @abstractmethod
    def plan(self, kv: KVBudget) -> KVPlan | None:
        """The method's plan (None: the model as is, with a dense cache)."""


KV_METHODS: Registry[KVMethod] = Registry("KV method", __name__)


def plan_method(name: str, kv: KVBudget) -> KVPlan | None:
    """The plan of the method registered as `name`."""
    return KV_METHODS.get(name)().plan(kv)

"""Hybrid KV selectors: how a reduced KV head picks (or merges) the visual tokens it keeps at prefill.

A selector is a small class registered in `SELECTORS` under the name a `KVPlan` gives (`snap`, `merge`,
`recent`, `last`); adding one is one new module in this package. It is made for one layer's prefill and
asked, per group of KV heads sharing a budget, for a `Buffer` of `count` tokens a row. Scoring selectors
rank the tokens (every text token first, then the visual tokens by score); merging ones average them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

import torch

from corehead.attention.kv_cache import Buffer
from corehead.registry import Registry

if TYPE_CHECKING:
    from corehead.attention.hybrid import KVPlan


@dataclass(frozen=True)
class Prefill:
    """One decoder layer's prefill, as the selectors see it."""

    plan: KVPlan
    query: torch.Tensor  # [B, H, L, D]
    key: torch.Tensor  # [B, Hkv, L, D]
    value: torch.Tensor
    scale: float
    visual: torch.Tensor  # [B, L] bool
    valid: torch.Tensor  # [B, L] bool, False at padding
    groups: int  # query heads per KV head
    n_kv_heads: int

    def last_rows_attention(self, rows: int) -> torch.Tensor:
        """[B, H, L] every query head's attention over the keys, averaged over the last `rows` prompt rows
        (which see every key but padding)."""
        q = self.query[:, :, -rows:].float()
        k = self.key.float().repeat_interleave(self.groups, dim=1)
        logits = (q @ k.transpose(-1, -2)) * self.scale
        logits = logits.masked_fill(~self.valid[:, None, None, :], float("-inf"))
        return logits.softmax(-1).mean(2)


class Selector(ABC):
    """Reduces KV heads of one layer's prefill to `count` tokens a row."""

    name: ClassVar[str]
    keeps_tokens: ClassVar[bool] = True  # False: tokens are merged, so no positions (no prefill option)

    def __init__(self, prefill: Prefill) -> None:
        self.prefill = prefill

    @abstractmethod
    def keep(self, heads: list[int], count: int) -> Buffer:
        """The buffer of KV `heads` holding `count` tokens a row."""


class ScoringSelector(Selector):
    """Keeps, per KV head, every text token and the visual tokens it scores highest, in sequence order."""

    @abstractmethod
    def scores(self) -> torch.Tensor:
        """[B, Hkv, L] how much each KV head wants each token (higher is kept first)."""

    @cached_property
    def _scores(self) -> torch.Tensor:
        return self.scores()  # once per layer, for every budget group

    def keep(self, heads: list[int], count: int) -> Buffer:
        p = self.prefill
        ranked = self._scores[:, heads].masked_fill(~p.visual[:, None, :], float("inf"))
        index = ranked.topk(count, dim=-1).indices.sort(dim=-1).values  # [B, n, count], in order
        gather = index[..., None].expand(-1, -1, -1, p.key.shape[-1])
        keys, values = p.key[:, heads].gather(2, gather), p.value[:, heads].gather(2, gather)
        return Buffer(heads, keys, values, p.valid.gather(1, index[:, 0]), index)


SELECTORS: Registry[Selector] = Registry("hybrid selector", __name__)

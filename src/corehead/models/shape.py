"""The decoder's attention shape, read once from a model's text config (TransformerLens keeps one config too)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """Layers, query heads per layer, KV heads per layer and head width of a model's language decoder.

    GQA is first-class: query head h reads KV head h // groups.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        """The shape of `model`'s language decoder (from `config.get_text_config()`)."""
        text = model.config.get_text_config()
        n_heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
        kv = getattr(text, "num_key_value_heads", None) or n_heads
        return cls(int(text.num_hidden_layers), n_heads, int(kv), int(head_dim))

    @property
    def groups(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_query_heads(self) -> int:
        """Query heads over all layers."""
        return self.n_layers * self.n_heads

    def kv_heads(self) -> list[tuple[int, int]]:
        """Every (layer, KV head), layer by layer."""
        return [(layer, j) for layer in range(self.n_layers) for j in range(self.n_kv_heads)]

    def check_heads(self, heads: Iterable[tuple[int, int]]) -> None:
        """Raise a ValueError naming the (layer, query head) pairs that do not exist."""
        bad = [(layer, h) for layer, h in heads if not (0 <= layer < self.n_layers and 0 <= h < self.n_heads)]
        if bad:
            raise ValueError(f"heads {bad} do not exist ({self.n_layers} layers x {self.n_heads} heads)")

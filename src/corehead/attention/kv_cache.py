"""The hybrid KV cache's storage: per-KV-head buffers of different sizes in one transformers cache layer.

Before compression a `HybridLayer` is an ordinary dynamic layer; `compress` replaces its keys and values by
`Buffer`s (KV heads grouped so that each buffer's heads hold the same number of tokens), which then grow
by each decode step's token. Cache operations the buffers cannot honour raise a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


@dataclass
class Buffer:
    """Keys and values of some KV heads of one layer, all holding the same number of tokens."""

    heads: list[int]
    keys: torch.Tensor  # [B, len(heads), S, D]
    values: torch.Tensor
    valid: torch.Tensor  # [B, S] bool: False at padding
    positions: torch.Tensor | None  # [B, len(heads), S] the tokens kept (None where tokens were merged)


class HybridLayer(DynamicLayer):
    """A cache layer that holds every token until `compress`, then per-head buffers of different sizes.

    `get_seq_length` stays the logical length (Qwen-VL builds decode positions from it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.logical = 0
        self.buffers: list[Buffer] = []
        self.valid: torch.Tensor | None = None  # [B, logical] before compression

    @property
    def compressed(self) -> bool:
        return bool(self.buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.logical += key_states.shape[-2]
        if not self.compressed:
            return super().update(key_states, value_states)
        b, n_new = key_states.shape[0], key_states.shape[-2]
        new_valid = torch.ones(b, n_new, dtype=torch.bool, device=key_states.device)
        new_positions = torch.arange(self.logical - n_new, self.logical, device=key_states.device)
        for buf in self.buffers:
            buf.keys = torch.cat([buf.keys, key_states[:, buf.heads]], dim=-2)
            buf.values = torch.cat([buf.values, value_states[:, buf.heads]], dim=-2)
            buf.valid = torch.cat([buf.valid, new_valid], dim=-1)
            if buf.positions is not None:
                grown = new_positions.expand(b, len(buf.heads), n_new)
                buf.positions = torch.cat([buf.positions, grown], dim=-1)
        return self.buffers[0].keys, self.buffers[0].values

    def get_seq_length(self) -> int:
        return self.logical

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.logical + query_length, 0

    def kv_bytes(self) -> int:
        """Bytes of keys and values this layer stores now."""
        if self.compressed:
            return sum(b.keys.nbytes + b.values.nbytes for b in self.buffers)
        if not self.is_initialized or self.keys is None or self.values is None:
            return 0
        return int(self.keys.nbytes + self.values.nbytes)

    def compress(self, buffers: list[Buffer]) -> None:
        """Replace the full keys and values by these buffers (they cover every KV head once)."""
        self.buffers = buffers
        self.keys = self.values = torch.tensor([])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        _refuse("beam search")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        _refuse("selecting batch rows")

    def batch_repeat_interleave(self, repeats: int) -> None:
        _refuse("repeating batch rows (num_return_sequences > 1)")


def _refuse(what: str) -> None:
    """Cache operations the per-head buffers do not support: a clear error instead of a wrong result."""
    raise ValueError(f"the hybrid KV cache does not support {what}; use greedy or sampled generate, one sequence each")

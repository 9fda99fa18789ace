"""What attribution patching reads from one forward and one backward: each head's output with its gradient,
and what each head reads from a set of keys (for the attention-pattern estimate of a knockout).

`head_gradients` adds a zero probe to every decoder layer's o_proj input (per head, [B, L, H, D]): its
gradient is the gradient at the heads' outputs through everything downstream, later heads included. `key_readout(keys)` runs the decoder's attention as corehead's SDPA does
and records, per layer, each head's attention mass on the barred `keys` and the part of its output that
those keys contribute: a knockout of the keys (renormalised over the rest) changes the head's output at a
row with mass m, output o and key part o_K by (m o - o_K) / (1 - m), exactly; downstream the estimate is linear.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from corehead.attention.head_outputs import head_outputs
from corehead.attention.recorder import CHUNK_ELEMENTS, LAYER_ATTENTION, CompactMask, scoped, sdpa


@dataclass
class HeadGradients:
    """Per decoder layer: the heads' outputs [B, L, H, D] of a forward, and a zero probe added to them whose
    gradient, after a backward, is the gradient at those outputs through every later layer and head."""

    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    probes: dict[int, torch.Tensor] = field(default_factory=dict)

    def grad(self, layer: int) -> torch.Tensor:
        grad = self.probes[layer].grad
        if grad is None:
            raise ValueError("no gradient yet: call backward on a function of the forward's outputs first")
        return grad


@contextmanager
def head_gradients(model: Any) -> Iterator[HeadGradients]:
    """For a forward run inside: every layer's head outputs, and probes that collect their gradient. The
    model's weights stop requiring gradients meanwhile, so a backward computes only what attribution needs."""
    found = HeadGradients()
    weights = [p for p in model.parameters() if p.requires_grad]

    def probe(layer: int, x: torch.Tensor) -> torch.Tensor:
        found.outputs[layer] = x.detach()
        found.probes[layer] = torch.zeros_like(x, requires_grad=True)
        return x + found.probes[layer]

    for weight in weights:
        weight.requires_grad_(False)
    try:
        with torch.enable_grad(), head_outputs(model, probe):
            yield found
    finally:
        for weight in weights:
            weight.requires_grad_(True)


@dataclass
class KeyReadout:
    """Per decoder layer: each head's attention mass on the barred keys [B, Lq, H] and what they contribute
    to its output [B, Lq, H, D]."""

    keys: torch.Tensor  # [B, Lk] bool
    mass: dict[int, torch.Tensor] = field(default_factory=dict)
    part: dict[int, torch.Tensor] = field(default_factory=dict)

    def change(self, layer: int, output: torch.Tensor) -> torch.Tensor:
        """[B, L, H, D]: how a knockout of the keys would change the heads' outputs `output` of `layer`."""
        m = self.mass[layer].to(output)[..., None]
        return (m * output - self.part[layer].to(output)) / (1 - m).clamp_min(1e-6)

    def attend(
        self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: CompactMask, scale: float
    ) -> torch.Tensor:
        """The layer's attention output (corehead's SDPA), recording mass and part on the barred keys."""
        layer = int(module.layer_idx)
        groups = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(groups, dim=1).float()
        v = value.repeat_interleave(groups, dim=1).float()
        barred = self.keys[:, : key.shape[2]].to(query.device)[:, None, None, :]
        chunk = max(1, CHUNK_ELEMENTS // max(1, key.shape[2] * query.shape[0] * query.shape[1]))
        masses, parts = [], []
        with torch.no_grad():
            for start in range(0, query.shape[2], chunk):
                rows = torch.arange(start, min(query.shape[2], start + chunk), device=query.device)
                scores = (query[:, :, rows].float() @ k.transpose(-1, -2)) * scale
                visible = mask.rows(rows.expand(query.shape[0], -1), key.shape[2])
                probs = scores.masked_fill(~visible, float("-inf")).softmax(-1).nan_to_num(0.0) * barred
                masses.append(probs.sum(-1))
                parts.append(probs @ v)
        self.mass[layer] = torch.cat(masses, dim=2).transpose(1, 2)
        self.part[layer] = torch.cat(parts, dim=2).transpose(1, 2)
        return sdpa(query, key, value, mask, scale, 0.0)


@contextmanager
def key_readout(keys: torch.Tensor) -> Iterator[KeyReadout]:
    """Record what each decoder head reads from `keys` ([B, Lk] bool) in forwards run inside decoder_attention."""
    readout = KeyReadout(keys)
    with scoped(LAYER_ATTENTION, readout.attend):
        yield readout

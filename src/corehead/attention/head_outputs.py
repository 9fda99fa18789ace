"""The one hook point for per-head outputs: each decoder layer's o_proj input, seen per head.

A head's contribution to the residual stream is its slice of the o_proj input (TransformerLens' `hook_z`):
reading it there works under any attention implementation (eager, SDPA, flash, corehead's own), and
replacing it cuts or patches exactly that head. `head_outputs(model, edit)` installs one forward pre-hook
per decoder layer's o_proj that hands `edit` the input as [B, L, H, D]; every reader and editor of head
outputs (ablations, patching, captures, means) is built on it. Hooks are removed on exit, even on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from corehead.models.shape import ModelShape

# (layer, its heads' outputs [B, L, H, D]) -> a replacement of the same shape, or None to leave it as it is
HeadEdit = Callable[[int, torch.Tensor], torch.Tensor | None]


def decoder_layers(model: Any) -> Any:
    """The language decoder's layers (each with self_attn.o_proj) of any supported family."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


@contextmanager
def head_outputs(model: Any, edit: HeadEdit, layers: Iterable[int] | None = None) -> Iterator[None]:
    """For forwards run inside, call `edit(layer, x)` with each of `layers`' (default: all) o_proj input
    x [B, L, H, D]; a tensor it returns replaces x (a view of the real input: clone before writing)."""
    blocks = decoder_layers(model)
    dim = ModelShape.of(model).head_dim
    with ExitStack() as stack:
        for index in range(len(blocks)) if layers is None else layers:

            def hook(module: Any, args: tuple[torch.Tensor, ...], index: int = index) -> Any:
                x = args[0]
                out = edit(index, x.view(*x.shape[:-1], -1, dim))
                return None if out is None else (out.flatten(-2), *args[1:])

            stack.callback(blocks[index].self_attn.o_proj.register_forward_pre_hook(hook).remove)
        yield

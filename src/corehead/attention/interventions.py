"""Per-head interventions, declared as small dataclasses and applied with context managers.

- `HeadAblation` cuts heads at their contribution: the head's slice of the o_proj input is zeroed, or set
  to its mean over a reference set (`head_means`). A forward pre-hook on each targeted layer's o_proj does
  it, so it works under any attention implementation; hooks are removed on exit, even on error.
- `HeadPatch` writes into heads' slices, at one position per sample, what they computed on a source sample
  (activation patching, `head_outputs`): a test of sufficiency where ablation tests necessity.
- `QueryZero` zeroes heads' queries (a forward hook on q_proj), so they attend uniformly to every key
  they may see: the legacy ablation of Retrieval Head and SparseMM, kept for comparability with their
  numbers (the head still writes an average of all values, so it is not a removal).
- `AttentionKnockout` forbids heads to attend to chosen keys (all visual tokens, or the region's tokens):
  inside corehead's registered attention function, those heads are recomputed with the keys masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Head = tuple[int, int]  # (layer, query head)


def decoder_layers(model: Any) -> Any:
    """The language decoder's layers (each with self_attn.o_proj) of any supported family."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


def _head_dim(attn: Any) -> int:
    return int(getattr(attn, "head_dim", attn.o_proj.in_features // attn.config.num_attention_heads))


def _targets(model: Any, heads: tuple[Head, ...]) -> list[tuple[int, Any, list[int]]]:
    """(layer, its attention module, its targeted heads) per layer, after checking every index exists."""
    layers = decoder_layers(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer {layer} does not exist (the decoder has {len(layers)})")
        by_layer.setdefault(layer, []).append(head)
    out = []
    for layer, chosen in sorted(by_layer.items()):
        attn = layers[layer].self_attn
        n_heads = attn.o_proj.in_features // _head_dim(attn)
        bad = [h for h in chosen if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"heads {bad} do not exist in layer {layer} ({n_heads} heads)")
        out.append((layer, attn, sorted(set(chosen))))
    return out


@dataclass(frozen=True)
class HeadAblation:
    """Replace the output of `heads` before o_proj: by zeros, or by their mean over a reference set."""

    heads: tuple[Head, ...]
    mode: Literal["zero", "mean"] = "zero"
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [heads, head_dim], for mode "mean"

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean":
            missing = sorted({layer for layer, _ in self.heads} - set(self.means))
            if missing:
                raise ValueError(f"mean ablation needs head means for layers {missing} (see head_means)")

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        with ExitStack() as stack:
            for layer, attn, heads in _targets(model, self.heads):
                hook = attn.o_proj.register_forward_pre_hook(self._hook(layer, heads, _head_dim(attn)))
                stack.callback(hook.remove)
            yield

    def _hook(self, layer: int, heads: list[int], dim: int) -> Any:
        def replace(module: Any, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0]
            x = x.view(*x.shape[:-1], -1, dim).clone()
            if self.mode == "zero":
                x[..., heads, :] = 0
            else:
                x[..., heads, :] = self.means[layer][heads].to(x)
            return (x.flatten(-2), *args[1:])

        return replace


@dataclass(frozen=True)
class HeadPatch:
    """At `positions` ([B], one per sample), replace `heads`' o_proj input slices by `values`.

    values: layer -> [B, heads, head_dim], every head's output at the source's position (`head_outputs`).
    Only full forwards are patched (decode steps of a generation run unpatched).
    """

    heads: tuple[Head, ...]
    values: dict[int, torch.Tensor]
    positions: torch.Tensor

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        with ExitStack() as stack:
            for layer, attn, heads in _targets(model, self.heads):
                dim = _head_dim(attn)

                def patch(
                    module: Any,
                    args: tuple[torch.Tensor, ...],
                    layer: int = layer,
                    heads: list[int] = heads,
                    dim: int = dim,
                ) -> tuple[torch.Tensor, ...]:
                    x = args[0]
                    if x.shape[1] <= int(self.positions.max()):  # a decode step
                        return args
                    x = x.view(*x.shape[:-1], -1, dim).clone()
                    rows = torch.arange(x.shape[0], device=x.device)
                    source = self.values[layer][:, heads].to(x)
                    x[rows[:, None], self.positions.to(x.device)[:, None], torch.as_tensor(heads)[None, :]] = source
                    return (x.flatten(-2), *args[1:])

                stack.callback(attn.o_proj.register_forward_pre_hook(patch).remove)
            yield


@torch.no_grad()
def head_outputs(model: Any, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every head's output (its o_proj input slice) at `positions` ([B], one per sample): layer -> [B, H, D]."""
    seen: dict[int, torch.Tensor] = {}
    hooks = []
    for index, layer in enumerate(decoder_layers(model)):
        dim = _head_dim(layer.self_attn)

        def keep(module: Any, args: tuple[torch.Tensor, ...], index: int = index, dim: int = dim) -> None:
            x = args[0]
            rows = torch.arange(x.shape[0], device=x.device)
            seen[index] = x[rows, positions.to(x.device)].view(x.shape[0], -1, dim).clone()

        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(keep))
    try:
        model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@dataclass(frozen=True)
class QueryZero:
    """Zero `heads`' queries: their attention becomes uniform over the keys they may see (legacy mode)."""

    heads: tuple[Head, ...]

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        with ExitStack() as stack:
            for _, attn, heads in _targets(model, self.heads):
                if not hasattr(attn, "q_proj"):
                    raise ValueError(f"{type(attn).__name__} has no q_proj: query-zero cannot reach its heads")
                dim = _head_dim(attn)

                def zero(module: Any, args: Any, out: torch.Tensor, heads: list[int] = heads, dim: int = dim) -> Any:
                    out = out.view(*out.shape[:-1], -1, dim).clone()
                    out[..., heads, :] = 0  # a zero query stays zero through q_norm and rotary embedding
                    return out.flatten(-2)

                stack.callback(attn.q_proj.register_forward_hook(zero).remove)
            yield


@torch.no_grad()
def head_means(model: Any, batches: list[dict[str, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Mean output of every head (its o_proj input slice) over the real tokens of reference batches."""
    layers = decoder_layers(model)
    sums: dict[int, torch.Tensor] = {}
    count = [0]
    mask_holder: list[torch.Tensor] = []
    hooks = []
    for index, layer in enumerate(layers):
        attn = layer.self_attn
        dim = _head_dim(attn)

        def collect(module: Any, args: tuple[torch.Tensor, ...], index: int = index, dim: int = dim) -> None:
            x = args[0].view(*args[0].shape[:-1], -1, dim).float()
            keep = mask_holder[0][..., None, None].to(x)
            sums[index] = sums.get(index, 0) + (x * keep).sum(dim=(0, 1))

        hooks.append(attn.o_proj.register_forward_pre_hook(collect))
    try:
        for batch in batches:
            mask_holder[:] = [batch["attention_mask"].bool()]
            model(**batch)
            count[0] += int(batch["attention_mask"].sum())
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: total / max(1, count[0]) for layer, total in sums.items()}


@dataclass
class AttentionKnockout:
    """`heads` may not attend to the keys in `keys` ([B, Lk] bool, True = forbidden), e.g. visual tokens."""

    heads: tuple[Head, ...]
    keys: torch.Tensor


_KNOCKOUT: ContextVar[AttentionKnockout | None] = ContextVar("corehead_knockout", default=None)


def active_knockout() -> AttentionKnockout | None:
    return _KNOCKOUT.get()


@contextmanager
def scoped(var: ContextVar[Any], value: Any) -> Iterator[Any]:
    """Set a context variable for the duration of a with-block, restoring it on exit, even on error."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def knockout(spec: AttentionKnockout) -> Any:
    """Apply an attention knockout to forwards run inside (within recorder.decoder_attention)."""
    return scoped(_KNOCKOUT, spec)

"""Per-head interventions, declared as small dataclasses, each applied with `with intervention.apply(model):`.

- `HeadAblation` cuts heads at their contribution: the head's slice of the o_proj input is zeroed, or set
  to its mean over a reference set (`head_means`), taken separately over text and visual positions: each
  position gets the mean of its own type. It edits `head_outputs`, so it works under any attention
  implementation; hooks are removed on exit, even on error.
- `HeadPatch` writes into heads' slices, at one position per sample, what they computed on a source sample
  (activation patching, `capture_head_outputs`): a test of sufficiency where ablation tests necessity.
- `QueryZero` zeroes heads' queries (a forward hook on q_proj), so they attend uniformly to every key
  they may see: the legacy ablation of Retrieval Head and SparseMM, kept for comparability with their
  numbers (the head still writes an average of all values, so it is not a removal).
- `AttentionKnockout` forbids heads to attend to chosen keys (all visual tokens, or the region's tokens):
  inside corehead's registered attention function, those heads are recomputed with the keys masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from corehead.attention.head_outputs import decoder_layers, head_outputs
from corehead.attention.recorder import KNOCKOUT, decoder_attention, scoped
from corehead.models.shape import ModelShape

Head = tuple[int, int]  # (layer, query head)
TEXT, VISUAL = 0, 1  # the position types of head means: head_means(...)[layer][TEXT | VISUAL] is [heads, head_dim]


def _targets(model: Any, heads: tuple[Head, ...]) -> dict[int, list[int]]:
    """Layer -> its targeted heads (sorted), after checking every index exists."""
    shape = ModelShape.of(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not 0 <= layer < shape.n_layers:
            raise ValueError(f"layer {layer} does not exist (the decoder has {shape.n_layers})")
        by_layer.setdefault(layer, []).append(head)
    for layer, chosen in sorted(by_layer.items()):
        bad = [h for h in chosen if not 0 <= h < shape.n_heads]
        if bad:
            raise ValueError(f"heads {bad} do not exist in layer {layer} ({shape.n_heads} heads)")
    return {layer: sorted(set(chosen)) for layer, chosen in sorted(by_layer.items())}


@dataclass(frozen=True)
class HeadAblation:
    """Replace the output of `heads` before o_proj: by zeros, or by their mean over a reference set.

    Mode "mean" takes `means` (layer -> [2, heads, head_dim], `head_means`) and `visual` ([B, L] bool, the
    batch's visual positions): a visual position gets the heads' visual mean, any other position (text,
    and each decode step of a generation) their text mean.
    """

    heads: tuple[Head, ...]
    mode: Literal["zero", "mean"] = "zero"
    means: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [2, heads, head_dim], mode "mean"
    visual: torch.Tensor | None = None  # [B, L] bool, mode "mean"

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "mean"):
            raise ValueError(f"mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.mode == "mean":
            missing = sorted({layer for layer, _ in self.heads} - set(self.means))
            if missing:
                raise ValueError(f"mean ablation needs head means for layers {missing} (see head_means)")

    def _mean(self, layer: int, heads: list[int], x: torch.Tensor) -> torch.Tensor:
        """[B, L, heads, D]: each position's mean of its type."""
        text, visual = self.means[layer][:, heads].to(x)
        if x.shape[1] == 1:  # a decode step: a generated token is text
            return text.expand(*x.shape[:2], *text.shape)
        if self.visual is None or self.visual.shape != x.shape[:2]:
            got = None if self.visual is None else tuple(self.visual.shape)
            raise ValueError(
                f"mean ablation needs the batch's visual positions [B, L] = {tuple(x.shape[:2])}, got {got}"
            )
        return torch.where(self.visual.to(x.device)[..., None, None], visual, text)

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        targets = _targets(model, self.heads)

        def replace(layer: int, x: torch.Tensor) -> torch.Tensor:
            x, heads = x.clone(), targets[layer]
            x[..., heads, :] = 0 if self.mode == "zero" else self._mean(layer, heads, x)
            return x

        with head_outputs(model, replace, targets):
            yield


@dataclass(frozen=True)
class HeadPatch:
    """At `positions` ([B], one per sample), replace `heads`' o_proj input slices by `values`.

    values: layer -> [B, heads, head_dim], every head's output at the source's position
    (`capture_head_outputs`). Only full forwards are patched (decode steps of a generation run unpatched).
    """

    heads: tuple[Head, ...]
    values: dict[int, torch.Tensor]
    positions: torch.Tensor

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        targets = _targets(model, self.heads)

        def patch(layer: int, x: torch.Tensor) -> torch.Tensor | None:
            if x.shape[1] <= int(self.positions.max()):  # a decode step
                return None
            x, heads = x.clone(), targets[layer]
            rows = torch.arange(x.shape[0], device=x.device)
            source = self.values[layer][:, heads].to(x)
            x[rows[:, None], self.positions.to(x.device)[:, None], torch.as_tensor(heads)[None, :]] = source
            return x

        with head_outputs(model, patch, targets):
            yield


@torch.no_grad()
def capture_head_outputs(
    model: Any, batch: dict[str, torch.Tensor], positions: torch.Tensor
) -> dict[int, torch.Tensor]:
    """Every head's output (its o_proj input slice) at `positions` ([B], one per sample): layer -> [B, H, D]."""
    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int, x: torch.Tensor) -> None:
        rows = torch.arange(x.shape[0], device=x.device)
        seen[layer] = x[rows, positions.to(x.device)].clone()

    with head_outputs(model, keep):
        model(**batch)
    return seen


@torch.no_grad()
def head_means(model: Any, batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Mean output of every head (its o_proj input slice) over the real tokens of reference batches, per
    position type: layer -> [2, heads, head_dim], [TEXT] over text tokens, [VISUAL] over visual tokens.
    `batches` yields (batch, its visual positions [B, L] bool)."""
    sums: dict[int, torch.Tensor] = {}
    kinds: list[torch.Tensor] = []  # the current batch's [2, B, L] weights: real text, real visual

    def collect(layer: int, x: torch.Tensor) -> None:
        weights = kinds[0].to(x.device, torch.float32)
        sums[layer] = sums.get(layer, 0) + torch.einsum("kbl,blhd->khd", weights, x.float())

    counts = torch.zeros(2)
    with head_outputs(model, collect):
        for batch, visual in batches:
            real = batch["attention_mask"].bool()
            visual = visual.to(real.device)
            kinds[:] = [torch.stack([real & ~visual, real & visual])]
            model(**batch)
            counts += kinds[0].sum(dim=(1, 2)).cpu()
    if bool((counts == 0).any()):
        raise ValueError(f"head means need text and visual tokens; the reference batches hold {counts.tolist()}")
    return {layer: total / counts.to(total.device)[:, None, None] for layer, total in sums.items()}


@dataclass(frozen=True)
class QueryZero:
    """Zero `heads`' queries: their attention becomes uniform over the keys they may see (legacy mode)."""

    heads: tuple[Head, ...]

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        layers, dim = decoder_layers(model), ModelShape.of(model).head_dim
        with ExitStack() as stack:
            for layer, heads in _targets(model, self.heads).items():
                attn = layers[layer].self_attn
                if not hasattr(attn, "q_proj"):
                    raise ValueError(f"{type(attn).__name__} has no q_proj: query-zero cannot reach its heads")

                def zero(module: Any, args: Any, out: torch.Tensor, heads: list[int] = heads) -> Any:
                    out = out.view(*out.shape[:-1], -1, dim).clone()
                    out[..., heads, :] = 0  # a zero query stays zero through q_norm and rotary embedding
                    return out.flatten(-2)

                stack.callback(attn.q_proj.register_forward_hook(zero).remove)
            yield


@dataclass(frozen=True)
class AttentionKnockout:
    """`heads` may not attend to the keys in `keys` ([B, Lk] bool, True = forbidden), e.g. visual tokens."""

    heads: tuple[Head, ...]
    keys: torch.Tensor

    @contextmanager
    def apply(self, model: Any) -> Iterator[None]:
        """Route the decoder through corehead's attention function, which recomputes the heads masked."""
        with decoder_attention(model), scoped(KNOCKOUT, self):
            yield

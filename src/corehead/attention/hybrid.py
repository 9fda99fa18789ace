"""CoRe-guided hybrid KV cache: full visual context for some KV heads, a small one for the rest, stored smaller.

`hybrid(model, heads, budget=0.1)` (or `hybrid_plan` with any per-(layer, KV head) budgets) is a context
manager around `generate` (or any forward with a cache). While it is active:

- a forward pre-hook on the model sees each new generation's prompt (its input ids say which tokens are
  visual) and puts a `HybridLayer` in every layer of the transformers cache it is given;
- the decoder runs through corehead's registered attention function, which hands the layer attention to
  `HybridState.attend`. At prefill it computes exact attention, then scores the visual tokens with the
  plan's selector and compresses the layer's cache: KV heads with no budget keep every token, the others
  keep every text token plus their budget of visual tokens (per head, different tokens per head), in
  separate buffers grouped by size. The cache is really smaller; decode attends each buffer on its own.
  With `prefill=True` the selection comes first and the reduced heads attend only to their kept tokens
  (causally) during the prefill too: cheaper long prefills, and an honest accuracy test, since retrieval
  often happens at the question tokens during the prefill.

Selectors (`SELECTORS`, one class per module of `corehead.attention.selectors`): `snap` (SnapKV), `merge`
(spatial merging), `recent` (DuoAttention's sink + recent streaming heads) and `last` (FastV's ranking).
Since the hybrid state computes the decoder's attention itself, recording (`record`) and attention knockouts
raise an error inside a hybrid context; o_proj hooks (head ablations) work as everywhere.

Supported: batches (left-padded; rows are padded to one kept count, so a row may keep a few more visual
tokens than its budget), greedy and sampled `generate`, prompts continued by several tokens at once (a
second turn). Not supported: beam search (cache reordering), a prefill that starts from a non-empty cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from corehead.attention.kv_cache import Buffer, HybridLayer
from corehead.attention.recorder import LAYER_ATTENTION, CompactMask, decoder_attention, scoped, sdpa
from corehead.attention.selectors import SELECTORS, Prefill
from corehead.models.shape import ModelShape

KVHead = tuple[int, int]  # (layer, KV head)
# mask entries per block of rows in the fused prefill: an additive mask in the query's dtype (128 MiB in
# float32) beside the kernel's own blocks, which never materialise the scores
PREFILL_MASK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class KVPlan:
    """Visual budget per (layer, KV head): the share of the visual tokens it keeps (absent = all of them)."""

    budgets: dict[KVHead, float]
    selector: str = "snap"  # one of SELECTORS
    window: int = 16  # prompt rows whose attention scores the tokens (snap)
    pool: int = 7  # neighbouring tokens pooled into a score (snap)
    sink: int = 4  # first visual tokens always kept (recent)
    prefill: bool = False  # reduced heads attend only to their kept tokens during the prefill too

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS.names():
            raise ValueError(f"selector must be one of {SELECTORS.help()}; got {self.selector!r}")
        if self.prefill and not SELECTORS.get(self.selector).keeps_tokens:
            raise ValueError("the prefill option needs a selector that keeps tokens, not one that merges them")
        bad = {k: v for k, v in self.budgets.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"budgets are shares of the visual tokens, between 0 and 1; got {bad}")


def visual_token_ids(config: Any) -> list[int]:
    """The ids of the placeholder tokens that stand for visual tokens in the decoder's input."""
    names = ("image_token_id", "video_token_id", "image_token_index", "video_token_index", "image_context_token_id")
    ids = {int(v) for n in names if isinstance(v := getattr(config, n, None), int) and v >= 0}
    if not ids:
        raise ValueError(f"{type(config).__name__} names no image or video token id: cannot tell visual tokens")
    return sorted(ids)


@dataclass
class HybridState:
    """What one hybrid context knows: the plan, the current prompt's visual tokens, and what was stored."""

    plan: KVPlan
    groups: int  # query heads per KV head
    n_kv_heads: int
    visual_ids: list[int]
    visual: torch.Tensor | None = None  # [B, L] bool for the prompt being prefilled
    valid: torch.Tensor | None = None  # [B, L] bool, False at padding
    layers: list[HybridLayer] = field(default_factory=list)
    kept: dict[KVHead, float] = field(default_factory=dict)  # share of visual tokens each KV head kept

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any, n_layers: int) -> None:
        """A new prompt: note its visual tokens and give the cache one HybridLayer per decoder layer."""
        self.visual = torch.isin(input_ids, torch.tensor(self.visual_ids, device=input_ids.device))
        self.valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(self.visual)
        self.layers = [HybridLayer() for _ in range(n_layers)]
        cache.layers = list(self.layers)
        self.kept = {}

    def kv_bytes(self) -> int:
        """Bytes of keys and values stored by the cache of the current generation."""
        return sum(layer.kv_bytes() for layer in self.layers)

    def attend(
        self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: CompactMask, scale: float
    ) -> torch.Tensor:
        """Layer attention [B, Lq, H, D] under the plan; compresses the layer's cache after its prefill."""
        layer = self.layers[int(module.layer_idx)] if self.layers else None
        if layer is None:  # no cache (use_cache=False): plain attention
            return sdpa(query, key, value, mask, scale, 0.0)
        if layer.compressed:
            return self._attend_buffers(layer, query, scale)
        if self.visual is None or key.shape[2] != self.visual.shape[1]:
            raise ValueError("the hybrid cache compresses a prompt prefilled in one forward from an empty cache")
        if self.visual.device != key.device:  # layers spread over devices (device_map="auto")
            self.visual, self.valid = self.visual.to(key.device), self.valid.to(key.device)  # type: ignore[union-attr]
        buffers = self._buffers(int(module.layer_idx), query, key, value, scale)
        if self.plan.prefill:
            out = self._attend_prefill(buffers, query, key, value, mask, scale)
        else:
            out = sdpa(query, key, value, mask, scale, 0.0)
        layer.compress(buffers)
        return out

    def _attend_prefill(
        self,
        buffers: list[Buffer],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: CompactMask,
        scale: float,
    ) -> torch.Tensor:
        """Prefill in which each buffer's query heads see only its kept tokens (causally, by position).

        Full buffers run the ordinary causal SDPA. A reduced buffer runs fused SDPA over its kept keys, one
        call per member of the GQA groups and large block of rows (strided views: no repeated keys or copied
        queries); the mask, one per KV head and shared by its group, compares kept positions with the rows'
        (kept keys are in sequence order, so each row sees a prefix of them)."""
        b, length = query.shape[0], query.shape[2]
        out = torch.empty_like(query, memory_format=torch.contiguous_format)  # [B, H, L, D]
        for buf in buffers:
            rows = _query_rows(buf.heads, self.groups)
            if buf.keys.shape[2] == length:  # a full buffer: the ordinary causal attention
                kv = _query_rows(buf.heads, 1)
                out[:, rows] = sdpa(query[:, rows], key[:, kv], value[:, kv], mask, scale, 0.0).transpose(1, 2)
                continue
            assert buf.positions is not None
            heads, kept = query[:, rows], buf.keys.shape[2]  # [B, n x groups, L, D]
            # written in place where the heads are consecutive (a view of `out`), else copied in at the end
            attended = out[:, rows] if isinstance(rows, slice) else torch.empty_like(heads)
            positions = buf.positions.masked_fill(~buf.valid[:, None, :], length)  # padding: seen by no row
            lowest = positions.min(-1, keepdim=True).values[:, :, None]  # [B, n, 1, 1] a head's first kept token
            first = int(lowest.max())  # rows before it see nothing
            chunk = max(1, PREFILL_MASK_ELEMENTS // max(1, b * len(buf.heads) * kept))
            for start in range(0, length, chunk):
                stop = min(length, start + chunk)
                at = torch.arange(start, stop, device=query.device)[None, None, :, None]
                visible = positions[:, :, None, :] <= at  # [B, n, rows, kept], one mask for every group member
                blind = lowest > at if start < first else None
                if blind is not None:
                    visible = visible | blind
                # additive, in the query's dtype: SDPA would convert a boolean mask again in every call
                bias = torch.zeros((), dtype=query.dtype, device=query.device).where(visible, -torch.inf)
                for g in range(self.groups):  # query heads g, g + groups, ...: one per KV head, a view
                    block = F.scaled_dot_product_attention(
                        heads[:, g :: self.groups, start:stop], buf.keys, buf.values, attn_mask=bias, scale=scale
                    )
                    attended[:, g :: self.groups, start:stop] = block if blind is None else block.masked_fill(blind, 0)
            if not isinstance(rows, slice):
                out[:, rows] = attended
        return out.transpose(1, 2)

    def _attend_buffers(self, layer: HybridLayer, query: torch.Tensor, scale: float) -> torch.Tensor:
        out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
        lq = query.shape[2]
        for buf in layer.buffers:
            rows = _query_rows(buf.heads, self.groups)
            s = buf.keys.shape[2]
            visible = buf.valid[:, None, None, :]
            if lq > 1:  # several new tokens: causal among themselves
                causal = (
                    torch.arange(s, device=query.device)[None, :]
                    <= (s - lq + torch.arange(lq, device=query.device))[:, None]
                )
                visible = visible & causal[None, None]
            attended = F.scaled_dot_product_attention(
                query[:, rows], buf.keys, buf.values, attn_mask=visible, scale=scale, enable_gqa=self.groups > 1
            )
            out[:, :, rows] = attended.transpose(1, 2)
        return out

    def _buffers(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
    ) -> list[Buffer]:
        """This layer's KV heads grouped by budget, each group compressed by the plan's selector."""
        assert self.visual is not None and self.valid is not None
        by_budget: dict[float | None, list[int]] = {}
        for j in range(self.n_kv_heads):
            by_budget.setdefault(self.plan.budgets.get((layer, j)), []).append(j)
        prefill = Prefill(self.plan, query, key, value, scale, self.visual, self.valid, self.groups, self.n_kv_heads)
        selector = SELECTORS.get(self.plan.selector)(prefill)
        out = []
        n_visual = self.visual.sum(1)  # [B]
        for budget, heads in sorted(by_budget.items(), key=lambda kv: -1.0 if kv[0] is None else kv[0]):
            if budget is None:
                every = torch.arange(key.shape[2], device=key.device).expand(key.shape[0], len(heads), -1)
                out.append(Buffer(heads, key[:, heads], value[:, heads], self.valid.clone(), every))
                for j in heads:
                    self.kept[(layer, j)] = 1.0
                continue
            keep = (n_visual.float() * budget).ceil().long().clamp(max=n_visual)  # visual tokens per row
            count = int((self.visual.shape[1] - n_visual + keep).max())  # kept tokens, one count for all rows
            out.append(selector.keep(heads, count))
            shown = float(((count - (self.visual.shape[1] - n_visual)).float() / n_visual.clamp_min(1)).mean())
            for j in heads:
                self.kept[(layer, j)] = shown
        return out


def _query_rows(kv_heads: list[int], groups: int) -> slice | list[int]:
    """The query heads reading these KV heads: a slice (a view, no copy) when they are consecutive."""
    first = kv_heads[0]
    if kv_heads == list(range(first, first + len(kv_heads))):
        return slice(first * groups, (first + len(kv_heads)) * groups)
    return [h for j in kv_heads for h in range(j * groups, (j + 1) * groups)]


@contextmanager
def hybrid_plan(model: Any, plan: KVPlan) -> Iterator[HybridState]:
    """Run `generate` (or forwards with a cache) inside with the plan's per-head KV budgets."""
    shape = ModelShape.of(model)
    layers = [layer for layer, _ in plan.budgets]
    heads = [head for _, head in plan.budgets]
    if layers and (max(layers) >= shape.n_layers or max(heads) >= shape.n_kv_heads or min(layers + heads) < 0):
        raise ValueError(f"the plan names KV heads outside {shape.n_layers} layers x {shape.n_kv_heads} KV heads")
    state = HybridState(plan, shape.groups, shape.n_kv_heads, visual_token_ids(model.config))

    def start(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        ids = kwargs.get("input_ids", args[0] if args else None)
        if cache is None or ids is None or cache.get_seq_length() > 0:
            return  # no cache, or a decode step
        state.start(ids, kwargs.get("attention_mask"), cache, shape.n_layers)

    with ExitStack() as stack:
        stack.enter_context(decoder_attention(model))
        stack.callback(model.register_forward_pre_hook(start, with_kwargs=True).remove)
        stack.enter_context(scoped(LAYER_ATTENTION, state.attend))
        yield state


def core_plan(
    model: Any, heads: list[tuple[int, int]], budget: float, selector: str = "snap", prefill: bool = False
) -> KVPlan:
    """Every KV head that serves one of the CoRe query `heads` keeps all tokens; the others keep `budget`."""
    shape = ModelShape.of(model)
    shape.check_heads(heads)
    full = {(layer, h // shape.groups) for layer, h in heads}
    return KVPlan({kv: budget for kv in shape.kv_heads() if kv not in full}, selector, prefill=prefill)


def hybrid(
    model: Any, heads: list[tuple[int, int]], budget: float = 0.1, selector: str = "snap", prefill: bool = False
) -> Any:
    """`with hybrid(model, heads, budget=0.1): model.generate(...)`: full visual KV only for the KV heads
    of the CoRe query `heads`, `budget` of the visual tokens for every other KV head; with `prefill`, those
    heads attend only to their kept tokens during the prefill as well."""
    return hybrid_plan(model, core_plan(model, heads, budget, selector, prefill))


def kv_fraction(plan: KVPlan, n_layers: int, n_kv_heads: int) -> float:
    """The share of all (layer, KV head) visual tokens the plan keeps, in theory."""
    total = n_layers * n_kv_heads
    return (total - len(plan.budgets) + sum(plan.budgets.values())) / total if total else math.nan

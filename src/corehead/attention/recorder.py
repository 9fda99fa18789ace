"""The one attention function corehead registers with transformers, and the RAM recorder that plugs into it.

`corehead` (registered in `AttentionInterface`, with a matching `AttentionMaskInterface` entry) computes
the ordinary SDPA result for the decoder. While a `record(...)` context is active it also computes, for the
selected query rows only, the post-softmax attention of every query head (GQA: head h reads KV head
h // groups) and reduces it at once to per-head statistics over the visual tokens. The mask entry returns
a `CompactMask` (the 2D padding mask and offsets), never a [L, L] tensor: memory grows linearly with the
sequence length. The vision tower keeps its own attention implementation.

What plugs in, each through a context variable: a recording plan (`record`), an attention knockout
(`AttentionKnockout.apply`: the knocked-out heads are recomputed with their forbidden keys masked) and a
replacement of the layer attention (the hybrid KV cache). The replacement computes attention itself, so a
recording or a knockout inside it raises rather than silently doing nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function

from corehead.metrics.ram import head_stats

if TYPE_CHECKING:
    from corehead.attention.interventions import AttentionKnockout
    from corehead.models.base import Encoded

NAME = "corehead"
CHUNK_ELEMENTS = 1 << 22  # mask entries per SDPA call when padding forces an explicit mask


@dataclass(frozen=True)
class CompactMask:
    """The causal + padding mask in linear size: key j is visible to query row i (absolute positions
    q_offset + i and kv_offset + j) iff kv_offset + j <= q_offset + i and keep[b, j]."""

    keep: torch.Tensor | None  # [B, Lk] bool, False at padding; None when nothing is padded
    q_offset: int
    kv_offset: int

    def rows(self, rows: torch.Tensor, kv_length: int) -> torch.Tensor:
        """[B, 1, R, Lk] bool visibility for query rows `rows` ([B, R] indices into the query block)."""
        keys = torch.arange(kv_length, device=rows.device) + self.kv_offset
        visible = keys[None, None, :] <= (rows[..., None] + self.q_offset)
        if self.keep is not None:
            visible = visible & self.keep.to(rows.device)[:, None, :]
        return visible[:, None]


def compact_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> CompactMask:
    """AttentionMaskInterface entry: the padding mask and offsets instead of a [B, 1, Lq, Lk] tensor."""
    if mask_function is not causal_mask_function:
        raise ValueError(
            "corehead's attention supports causal decoders with padding masks only (no sliding windows, "
            "bidirectional image blocks or packed sequences)"
        )
    keep = None
    if attention_mask is not None:
        keep = attention_mask[:, -kv_length:].bool()
        if bool(keep.all()):
            keep = None
    return CompactMask(keep, int(q_offset), int(kv_offset))


@dataclass
class RowPlan:
    """What to record for one batch: query rows, their groups, and the visual token slots to reduce over.

    rows [B, R] positions in the sequence (-1 = unused slot); row_groups [B, R, G] float weights that
    average rows into G groups (each column sums to 1 over a sample's rows, or is all 0 when the sample has
    no row in that group); visual [B, N] positions of visual tokens (-1 = unused); valid [B, N] bool;
    region, distractors [B, N] float: each token's weight in the evidence region and in the distractors (the
    mean over distractor objects; models/regions.py); unit_weights [B, N, U]: the share of each token's
    mass that goes to each unit (1 on its unit; a video token splits its mass evenly over the frames it covers).

    Recorded per layer: `stats` [B, H, G, len(STATS) + U], the statistics of metrics/ram.py followed by
    the attention mass on each unit; with `keep_maps`, also `maps` [B, H, G, N], the mass on every visual
    token (per-cell maps for the report).
    """

    rows: torch.Tensor
    row_groups: torch.Tensor
    visual: torch.Tensor
    valid: torch.Tensor
    region: torch.Tensor
    distractors: torch.Tensor
    unit_weights: torch.Tensor
    stats: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, H, G, len(STATS) + U]
    keep_maps: bool = False
    maps: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, H, G, N], with keep_maps
    record_decode: bool = False  # also record each generated token's row during generate
    decode: list[dict[int, torch.Tensor]] = field(default_factory=list)  # per decode step: layer -> [B, H, S+U]


_PLAN: ContextVar[RowPlan | None] = ContextVar("corehead_plan", default=None)
# a replacement for the decoder layers' attention (the hybrid KV cache): (module, q, k, v, mask, scale) -> out
LAYER_ATTENTION: ContextVar[Any] = ContextVar("corehead_layer_attention", default=None)
KNOCKOUT: ContextVar[AttentionKnockout | None] = ContextVar("corehead_knockout", default=None)


@contextmanager
def scoped(var: ContextVar[Any], value: Any) -> Iterator[Any]:
    """Set a context variable for the duration of a with-block, restoring it on exit, even on error."""
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def corehead_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA output [B, Lq, H, D]; records the planned rows of decoder layers when a plan is active."""
    if not isinstance(attention_mask, CompactMask | None):
        raise TypeError(f"corehead attention needs its own mask entry, got {type(attention_mask).__name__}")
    mask = attention_mask or CompactMask(None, key.shape[2] - query.shape[2], 0)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = getattr(module, "layer_idx", None)
    replacement = LAYER_ATTENTION.get()
    if replacement is not None and layer is not None:
        if _PLAN.get() is not None or KNOCKOUT.get() is not None:
            raise ValueError(
                "record(...) and attention knockouts do not run inside corehead.hybrid(...): the hybrid cache "
                "computes the decoder's attention itself; record or knock out outside the hybrid context"
            )
        return replacement(module, query, key, value, mask, scale), None
    blocked = _knocked_out(layer, key)
    plan = _PLAN.get()
    if plan is not None and layer is not None:
        if query.shape[2] > 1:
            plan.stats[int(layer)] = _record(
                plan, plan.rows, plan.row_groups, query, key, mask, scale, int(layer), blocked
            )
        elif plan.record_decode:  # one decode step: the row of the token generated last
            if not plan.decode or int(layer) in plan.decode[-1]:
                plan.decode.append({})
            ones = torch.ones(query.shape[0], 1, 1, device=query.device)
            rows = torch.zeros(query.shape[0], 1, dtype=torch.long, device=query.device)
            plan.decode[-1][int(layer)] = _record(plan, rows, ones, query, key, mask, scale, None, blocked)[:, :, 0]
    dropout = dropout if module.training else 0.0
    out = sdpa(query, key, value, mask, scale, dropout)
    if blocked is not None:  # recompute the knocked-out heads with their forbidden keys masked
        heads, forbid = blocked
        keep = ~forbid if mask.keep is None else mask.keep & ~forbid
        groups = query.shape[1] // key.shape[1]
        kv = [h // groups for h in heads]
        sub = sdpa(
            query[:, heads], key[:, kv], value[:, kv], CompactMask(keep, mask.q_offset, mask.kv_offset), scale, dropout
        )
        out[:, :, heads] = sub
    return out, None


def _knocked_out(layer: int | None, key: torch.Tensor) -> tuple[list[int], torch.Tensor] | None:
    """The active knockout's heads in `layer` and the keys [B, Lk] they may not see (None: no such heads)."""
    spec = KNOCKOUT.get()
    heads = [h for lay, h in spec.heads if lay == layer] if spec is not None and layer is not None else []
    if not heads:
        return None
    assert spec is not None
    forbid = torch.zeros(key.shape[0], key.shape[2], dtype=torch.bool, device=key.device)
    span = min(spec.keys.shape[1], key.shape[2])
    forbid[:, :span] = spec.keys[:, :span].to(key.device)
    return heads, forbid


def sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: CompactMask, scale: float, dropout: float
) -> torch.Tensor:
    """Exact causal SDPA with padding, in query chunks so no mask block exceeds CHUNK_ELEMENTS entries."""
    lq, lk = query.shape[2], key.shape[2]
    plain = mask.keep is None and (lq == 1 or (lq == lk and mask.q_offset == mask.kv_offset))
    key, value, gqa = _grouped(query, key, value, masked=not plain)
    if plain:
        # nothing padded: a decode step sees every key, a prefill is plainly causal
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=lq > 1, dropout_p=dropout, scale=scale, enable_gqa=gqa
        )
        return out.transpose(1, 2).contiguous()
    chunk = max(1, CHUNK_ELEMENTS // max(1, lk * query.shape[0]))
    outs = []
    for start in range(0, lq, chunk):
        rows = torch.arange(start, min(lq, start + chunk), device=query.device).expand(query.shape[0], -1)
        visible = mask.rows(rows, lk)
        blind = ~visible.any(-1, keepdim=True)  # rows that may see no key (padding, a full knockout)
        attended = F.scaled_dot_product_attention(
            query[:, :, start : start + chunk],
            key,
            value,
            attn_mask=visible | blind,
            dropout_p=dropout,
            scale=scale,
            enable_gqa=gqa,
        )
        outs.append(attended.masked_fill(blind, 0.0))  # they read nothing
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def _grouped(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, masked: bool
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Key, value and `enable_gqa` for SDPA. On CUDA only the flash kernel takes grouped heads (half
    precision, no explicit mask); anything else would fall back to the math kernel, which materialises
    [Lq, Lk] scores, so there the KV heads are expanded to the query heads (linear memory) instead."""
    groups = query.shape[1] // key.shape[1]
    if groups == 1:
        return key, value, False
    if query.is_cuda and (masked or query.dtype not in (torch.float16, torch.bfloat16)):
        return key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1), False
    return key, value, True


def _record(
    plan: RowPlan,
    rows: torch.Tensor,
    row_groups: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    mask: CompactMask,
    scale: float,
    layer: int | None = None,
    blocked: tuple[list[int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Post-softmax attention of query `rows` ([B, R] in the query block), averaged into `row_groups`
    ([B, R, G]) and reduced to per-head statistics and per-unit masses over the plan's visual tokens
    ([B, H, G, S + U]); the maps themselves are kept for `layer` when the plan asks for them. `blocked`
    (heads, [B, Lk] forbidden keys) is an active knockout: those heads' rows are recorded as they run."""
    device = query.device  # the layer's device: plan tensors follow it when layers are spread over devices
    rows, row_groups = rows.to(device).clamp_min(0), row_groups.to(device)
    valid, visual_slots = plan.valid.to(device), plan.visual.to(device).clamp_min(0)
    q = query.gather(2, rows[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3]))
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # [B, H, R, Lk]
    scores = scores.masked_fill(~mask.rows(rows, key.shape[2]), float("-inf"))
    if blocked is not None:
        heads, forbid = blocked
        scores[:, heads] = scores[:, heads].masked_fill(forbid[:, None, None, :], float("-inf"))
    probs = scores.softmax(-1).nan_to_num(0.0)  # unused row slots may see no key at all
    visual = probs.gather(-1, visual_slots[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1))
    maps = torch.einsum("bhrn,brg->bhgn", visual, row_groups.to(visual.dtype)) * valid[:, None, None, :]
    if plan.keep_maps and layer is not None:
        plan.maps[layer] = maps.cpu()
    units = torch.einsum("bhgn,bnu->bhgu", maps, plan.unit_weights.to(device, maps.dtype))
    stats = head_stats(maps, valid, plan.region.to(device), plan.distractors.to(device))
    return torch.cat([stats, units], dim=-1)


def register() -> None:
    """Make 'corehead' an attention implementation transformers can dispatch to (idempotent)."""
    AttentionInterface.register(NAME, corehead_attention)
    AttentionMaskInterface.register(NAME, compact_mask)


@contextmanager
def decoder_attention(model: Any) -> Iterator[None]:
    """Route the language decoder (only) through corehead's attention; restore the previous setting on exit."""
    register()
    text = model.config.get_text_config()
    before = text._attn_implementation
    nested = text is not model.config  # a VLM: only its text sub-config changes
    model.set_attn_implementation({"text_config": NAME} if nested else NAME)
    try:
        yield
    finally:
        model.set_attn_implementation({"text_config": before} if nested else before)


def record(plan: RowPlan) -> Any:
    """Collect per-layer statistics into `plan.stats` for forwards run inside (within decoder_attention; not
    within a hybrid KV cache, where it raises)."""
    return scoped(_PLAN, plan)


ROW_GROUPS: tuple[str, ...] = ("all", "question", "prompt_end", "answer")


def group_rows(e: Encoded) -> dict[str, np.ndarray]:
    """The query rows of each group of ROW_GROUPS, chosen by the tokens' tags (docs/query-groups.md):
    'all' is the text after the visual input (question, chat template and gold answer, but no visual
    wrapper such as <|vision_end|> or an image-newline, and not the end of turn after the answer);
    'question' the question's tokens; 'prompt_end' the last prompt token (it predicts the first answer
    token); 'answer' the gold answer's tokens (when encoded with it)."""
    after = np.arange(e.length) > int(e.token_map.positions.max(initial=-1))
    text = np.isin(e.tags, ("question", "prompt", "answer"))
    return {
        "all": np.flatnonzero(after & text),
        "question": e.question,
        "prompt_end": np.array([e.prompt_end]),
        "answer": e.answer,
    }


def plan_rows(encoded: list[Encoded], width: int, regions: list[Any], distractors: list[Any] | None = None) -> RowPlan:
    """A RowPlan for a left-padded batch of `Encoded` samples of sequence length `width`.

    regions / distractors: per sample, the weight of each token of its map (models/regions.py; None: no
    distractors). Rows: the groups of `group_rows`, in ROW_GROUPS order.
    """
    per_rows, per_groups = [], []
    for e in encoded:
        members = [torch.as_tensor(r, dtype=torch.long) for r in group_rows(e).values()]
        weights = torch.zeros(sum(len(m) for m in members), len(ROW_GROUPS))
        start = 0
        for g, rows in enumerate(members):
            weights[start : start + len(rows), g] = 1.0 / max(len(rows), 1)
            start += len(rows)
        per_rows.append(torch.cat(members) + width - e.length)
        per_groups.append(weights)
    n_rows = max(len(r) for r in per_rows)
    n_vis = max(len(e.token_map) for e in encoded)
    n_units = max(int((e.token_map.units + e.token_map.spans).max(initial=0)) for e in encoded)
    batch = len(encoded)
    plan = RowPlan(
        rows=torch.full((batch, n_rows), -1, dtype=torch.long),
        row_groups=torch.zeros(batch, n_rows, len(ROW_GROUPS)),
        visual=torch.full((batch, n_vis), -1, dtype=torch.long),
        valid=torch.zeros(batch, n_vis, dtype=torch.bool),
        region=torch.zeros(batch, n_vis),
        distractors=torch.zeros(batch, n_vis),
        unit_weights=torch.zeros(batch, n_vis, n_units),
    )
    for b, e in enumerate(encoded):
        plan.rows[b, : len(per_rows[b])] = per_rows[b]
        plan.row_groups[b, : len(per_rows[b])] = per_groups[b]
        n = len(e.token_map)
        plan.visual[b, :n] = torch.as_tensor(e.token_map.positions + width - e.length)
        plan.valid[b, :n] = True
        plan.region[b, :n] = torch.as_tensor(np.asarray(regions[b], dtype=np.float32))
        if distractors is not None:
            plan.distractors[b, :n] = torch.as_tensor(np.asarray(distractors[b], dtype=np.float32))
        tm = e.token_map
        for i in range(int(tm.spans.max(initial=0))):
            covers = torch.as_tensor(np.flatnonzero(tm.spans > i))
            share = torch.as_tensor(1.0 / tm.spans[covers.numpy()], dtype=torch.float32)
            plan.unit_weights[b, covers, torch.as_tensor(tm.units[covers.numpy()] + i)] = share
    return plan

"""CoRe-guided KV compression against full attention and the methods users would otherwise pick.

Methods, all at the same total visual KV budget as `core` (the share of (layer, KV head, visual token)
entries kept), on the same samples, interleaved sample by sample so timings share conditions:

- `full`: the model as is (native attention, dense cache);
- `core`: KV heads serving a CoRe head keep every visual token, the others `budget` of them (snap);
- `random` / `bottom`: the same with as many random / lowest-scored KV heads in place of the CoRe ones;
- `uniform`: every KV head keeps the same share (SnapKV-style);
- `sparsemm`: per-KV-head shares proportional to the heads' scores (SparseMM-style);
- `duo`: CoRe KV heads full, the others a few first and the last visual tokens (DuoAttention-style);
- `fastv`: the first layers full, every KV head of later layers the same top visual tokens by the last
  prompt row's attention (FastV-style ranking, applied to the cache).

Query-aware (default): the whole prompt is prefilled at once, so the selection sees the question.
Query-agnostic: the visual input is prefilled and compressed first, the question comes after (a second
turn over the same image, document or video), as kvpress evaluates.

Rows (method, sample, answer, correct, prefill seconds, decode seconds per token, KV bytes kept and full)
go to RUN/accelerate.jsonl as produced; a rerun skips the rows already there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from corehead.attention.hybrid import KVPlan, hybrid_plan, kv_fraction
from corehead.data.sample import Sample
from corehead.experiments.runs import RowLog, Run, Shard, current_shard, dataset_order
from corehead.heads import HeadSet
from corehead.metrics.stats import bootstrap_mean_ci
from corehead.metrics.tasks import score_answer
from corehead.models.base import ChatAdapter

SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # inputs laid along the sequence
METHODS: tuple[str, ...] = ("full", "core", "uniform", "fastv", "random", "bottom", "duo", "sparsemm")


def _shape(model: Any) -> tuple[int, int, int]:
    text = model.config.get_text_config()
    n_kv = int(text.num_key_value_heads)
    return int(text.num_hidden_layers), n_kv, int(text.num_attention_heads) // n_kv


def _all_kv(n_layers: int, n_kv: int) -> list[tuple[int, int]]:
    return [(layer, j) for layer in range(n_layers) for j in range(n_kv)]


def _with_full(
    full: set[tuple[int, int]], every: list[tuple[int, int]], budget: float, selector: str, prefill: bool = False
) -> KVPlan:
    return KVPlan({kv: budget for kv in every if kv not in full}, selector, prefill=prefill)


def method_plans(
    model: Any, headset: HeadSet, budget: float, methods: list[str], seed: int = 0, prefill: bool = False
) -> dict[str, Any]:
    """KVPlan per method (None for full), every one at the total visual KV share of `core`; with `prefill`,
    reduced heads attend only to their kept tokens during the prefill too."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget is a share of the visual tokens, between 0 and 1; got {budget}")
    n_layers, n_kv, groups = _shape(model)
    every = _all_kv(n_layers, n_kv)
    core = {(layer, h // groups) for layer, h in headset.selected}
    target = kv_fraction(_with_full(core, every, budget, "snap"), n_layers, n_kv)
    scores = headset.kv_scores("sum")  # [layers, kv heads]
    by_score = sorted(every, key=lambda kv: scores[kv])
    plans: dict[str, Any] = {}
    for method in methods:
        if method == "full":
            plans[method] = None
        elif method == "core":
            plans[method] = _with_full(core, every, budget, "snap", prefill)
        elif method == "duo":
            plans[method] = _with_full(core, every, budget, "recent", prefill)
        elif method == "random":
            rng = np.random.default_rng(seed)
            pick = {every[int(i)] for i in rng.choice(len(every), size=len(core), replace=False)}
            plans[method] = _with_full(pick, every, budget, "snap", prefill)
        elif method == "bottom":
            plans[method] = _with_full(set(by_score[: len(core)]), every, budget, "snap", prefill)
        elif method == "uniform":
            plans[method] = KVPlan({kv: target for kv in every}, "snap", prefill=prefill)
        elif method == "sparsemm":
            plans[method] = KVPlan(_proportional(scores, target), "snap", prefill=prefill)
        else:  # fastv: the first layer(s) whole, the same share for every KV head after
            first = max(1, round(2 * n_layers / 32))  # FastV prunes after layer 2 of 32
            share = float(np.clip((target * n_layers - first) / max(1, n_layers - first), 0.0, 1.0))
            plans[method] = KVPlan({(lay, j): share for lay, j in every if lay >= first}, "last", prefill=prefill)
    return plans


def _proportional(scores: np.ndarray, target: float) -> dict[tuple[int, int], float]:
    """Shares proportional to the scores with mean `target`, capped at 1 (the excess goes to the others)."""
    weights = np.clip(scores.astype(float), 1e-9, None).ravel()
    share = np.zeros_like(weights)
    capped = np.zeros_like(weights, dtype=bool)
    for _ in range(len(weights)):
        left = target * len(weights) - capped.sum()
        share[~capped] = left * weights[~capped] / weights[~capped].sum()
        over = (share > 1.0) & ~capped
        if not over.any():
            break
        capped |= over
        share[capped] = 1.0
    n_kv = scores.shape[1]
    return {(i // n_kv, i % n_kv): float(min(1.0, s)) for i, s in enumerate(share)}


@contextmanager
def forward_times(model: Any) -> Iterator[list[float]]:
    """Wall time of every forward of `model` run inside (the first of a generate is its prefill)."""
    times: list[float] = []
    began: list[float] = []

    def sync() -> None:
        if torch.cuda.is_available() and next(model.parameters()).is_cuda:
            torch.cuda.synchronize()

    def before(module: Any, args: Any) -> None:
        sync()
        began.append(time.perf_counter())

    def after(module: Any, args: Any, out: Any) -> None:
        sync()
        times.append(time.perf_counter() - began.pop())

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield times
    finally:
        for hook in hooks:
            hook.remove()


def _kv_bytes_full(model: Any, tokens: int) -> int:
    n_layers, n_kv, _ = _shape(model)
    text = model.config.get_text_config()
    dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    return 2 * n_layers * n_kv * dim * tokens * next(model.parameters()).element_size()


def _run_one(
    adapter: ChatAdapter, sample: Sample, plan: KVPlan | None, max_new_tokens: int, query_agnostic: bool = False
) -> dict[str, Any]:
    """Answer one sample under a plan; timings, KV bytes and peak memory (CUDA only).

    Query-agnostic: the visual input is prefilled (and compressed) on its own, then the question follows as
    a second forward over that cache, so the selection cannot depend on the question (kvpress's setting).
    """
    model = adapter.model
    encoded = adapter.encode(sample)
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    context = hybrid_plan(model, plan) if plan is not None else nullcontext(None)
    with torch.no_grad(), context as state, forward_times(model) as times:
        if query_agnostic:
            batch = {k: v.to(model.device) for k, v in adapter.collate([encoded]).items()}
            cut = int(encoded.token_map.positions.max()) + 1  # just after the last visual token
            context_only = {k: v[:, :cut] if k in SEQUENCE_KEYS else v for k, v in batch.items()}
            cache = DynamicCache(config=model.config)
            model(**context_only, cache=cache)
            question = {k: v for k, v in batch.items() if k in SEQUENCE_KEYS}
            new = model.generate(
                **question,
                cache=cache,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=adapter.end_token,
                pad_token_id=adapter.pad_token,
            )[:, batch["input_ids"].shape[1] :]
            answer = adapter.tokenizer.batch_decode(new, skip_special_tokens=True)[0].strip()
        else:
            answer = adapter.generate_encoded([encoded], max_new_tokens)[0]
    before_answer = 2 if query_agnostic else 1  # forwards before the first answer token
    tokens = encoded.length + len(times) - before_answer  # the last generated token is never fed back
    full = _kv_bytes_full(model, tokens)
    decode = times[before_answer:]
    return {
        "prediction": answer,
        "correct": score_answer(sample, answer, adapter),
        "prefill_s": float(sum(times[:before_answer])),
        "decode_s_per_token": float(np.mean(decode)) if decode else None,
        "kv_bytes": state.kv_bytes() if state is not None else full,
        "kv_bytes_full": full,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


def accelerate(
    adapter: ChatAdapter,
    samples: list[Sample],
    headset: HeadSet,
    out: Path,
    budget: float = 0.1,
    methods: list[str] | None = None,
    max_new_tokens: int = 8,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
    prefill: bool = False,
    query_agnostic: bool = False,
    dataset: str = "custom",
    shard: Shard | None = None,
) -> list[dict[str, Any]]:
    """Every sample under every method (interleaved); rows go to out/accelerate.jsonl (resumable, sharded
    under a distributed launch: experiments/runs.py; timings then share the machine)."""
    methods = methods or list(METHODS)
    plans = method_plans(adapter.model, headset, budget, methods, seed, prefill)
    shard = shard or current_shard()
    setting = {"budget": budget, "prefill": prefill, "query_agnostic": query_agnostic}
    settings = {"model": adapter.name, "dataset": dataset, "heads": headset.ranking, **setting, "seed": seed}
    run = Run(out, "accelerate", settings, shard, {"methods": methods, "max_new_tokens": max_new_tokens})
    log = RowLog(out / "accelerate.jsonl", lambda r: (r["method"], r["id"]), shard)
    done = {(r["method"], r["id"]) for r in log.read()}
    n_layers, n_kv, _ = _shape(adapter.model)
    for (sample,) in shard.batches(samples, 1):
        for method, plan in plans.items():
            if (method, sample.id) in done:
                continue
            share = 1.0 if plan is None else kv_fraction(plan, n_layers, n_kv)
            row = {"method": method, "id": sample.id, **setting}
            row["visual_kv_share"] = share
            row.update(_run_one(adapter, sample, plan, max_new_tokens, query_agnostic))
            log.append([row])
        if on_progress is not None:
            on_progress(1)
    order = {m: i for i, m in enumerate(methods)}
    key = dataset_order(samples)
    rows = log.merge(order=lambda r: (key(r["id"]), order.get(r["method"], len(order)), r["method"]))
    have = {(r["method"], r["id"]) for r in rows}
    run.finish(sum(all((m, s.id) in have for m in methods) for s in samples), len(samples))
    wanted = {s.id for s in samples}
    return [r for r in rows if r["id"] in wanted]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: accuracy with a 95% CI, median prefill and decode times, KV bytes; ratios to `full`."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    table = []
    for method, group in by_method.items():
        acc = np.array([[float(r["correct"])] for r in group])
        mean, low, high = bootstrap_mean_ci(acc)
        decode = [r["decode_s_per_token"] for r in group if r["decode_s_per_token"] is not None]
        peaks = [r["peak_memory_bytes"] for r in group if r["peak_memory_bytes"] is not None]
        table.append(
            {
                "method": method,
                "n": len(group),
                "visual_kv_share": group[0]["visual_kv_share"],
                "accuracy": float(mean[0]),
                "accuracy_ci": [float(low[0]), float(high[0])],
                "prefill_s": float(np.median([r["prefill_s"] for r in group])),
                "decode_s_per_token": float(np.median(decode)) if decode else None,
                "kv_bytes": float(np.mean([r["kv_bytes"] for r in group])),
                "kv_bytes_full": float(np.mean([r["kv_bytes_full"] for r in group])),
                "peak_memory_bytes": float(np.max(peaks)) if peaks else None,
            }
        )
    full = next((t for t in table if t["method"] == "full"), None)
    for t in table:
        for key in ("accuracy", "prefill_s", "decode_s_per_token", "kv_bytes", "peak_memory_bytes"):
            base = full.get(key) if full is not None else None
            t[f"{key}_vs_full"] = t[key] / base if base and t[key] is not None else None
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(table, key=lambda t: order.get(t["method"], len(order)))

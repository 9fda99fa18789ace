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

Each method is a small class in experiments/kv_methods/, registered in `KV_METHODS`.

Query-aware (default): the whole prompt is prefilled at once, so the selection sees the question.
Query-agnostic: the visual input is prefilled and compressed first, the question comes after (a second
turn over the same image, document or video), as kvpress evaluates.

Rows (method, sample, answer, correct, prefill seconds, decode seconds per token, KV bytes kept and full)
go to RUN/accelerate.jsonl as produced; a rerun skips the rows already there. The summary per method goes
to RUN/accelerate.json and RUN/accelerate.png when the run is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import DynamicCache

from corehead.attention.hybrid import KVPlan, hybrid_plan, kv_fraction
from corehead.data.sample import Sample
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, plan_method
from corehead.experiments.runs import Shard
from corehead.experiments.study import JsonRows, Position, Study, Work, run_study
from corehead.heads import HeadSet
from corehead.metrics.stats import bootstrap_mean_ci
from corehead.metrics.tasks import score_answer
from corehead.models.base import SEQUENCE_KEYS, ChatAdapter, Encoded
from corehead.models.shape import ModelShape
from corehead.plots import kv_tradeoff
from corehead.runfolder import RunFolder

__all__ = ["KV_METHODS", "SEQUENCE_KEYS", "accelerate", "forward_times", "method_plans", "summarize"]


def method_plans(
    model: Any, headset: HeadSet, budget: float, methods: list[str], seed: int = 0, prefill: bool = False
) -> dict[str, KVPlan | None]:
    """KVPlan per method (None for full), every one at the total visual KV share of `core`; with `prefill`,
    reduced heads attend only to their kept tokens during the prefill too."""
    unknown = [m for m in methods if m not in KV_METHODS.names()]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {KV_METHODS.help()}")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget is a share of the visual tokens, between 0 and 1; got {budget}")
    kv = KVBudget.of(ModelShape.of(model), headset, budget, seed, prefill)
    return {method: plan_method(method, kv) for method in methods}


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
    shape = ModelShape.of(model)
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * tokens * next(model.parameters()).element_size()


def _answer_after_context(adapter: ChatAdapter, encoded: Encoded, max_new_tokens: int) -> str:
    """The visual input prefilled on its own, then the question as a second forward over its cache."""
    model = adapter.model
    batch = {k: v.to(model.device) for k, v in adapter.collate([encoded]).items()}
    cut = int(encoded.token_map.positions.max()) + 1  # just after the last visual token
    context_only = {k: v[:, :cut] if k in SEQUENCE_KEYS else v for k, v in batch.items()}
    cache = DynamicCache(config=model.config)
    model(**context_only, cache=cache)
    question = {k: v for k, v in batch.items() if k in SEQUENCE_KEYS}
    return adapter.decode(adapter.generate_ids(question, max_new_tokens, cache=cache))[0]


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
            answer = _answer_after_context(adapter, encoded, max_new_tokens)
        else:
            answer = adapter.generate_encoded([encoded], max_new_tokens)[0]
    before_answer = 2 if query_agnostic else 1  # forwards before the first answer token
    tokens = encoded.length + len(times) - before_answer  # the last generated token is never fed back
    full = _kv_bytes_full(model, tokens)
    decode = times[before_answer:]
    return {
        "prediction": answer,
        "correct": score_answer(sample, answer, adapter.parse_boxes),
        "prefill_s": float(sum(times[:before_answer])),
        "decode_s_per_token": float(np.mean(decode)) if decode else None,
        "kv_bytes": state.kv_bytes() if state is not None else full,
        "kv_bytes_full": full,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


@dataclass(frozen=True)
class AccelerateStudy(Study):
    """Every sample under every method's plan, one sample at a time (methods interleaved, so timings share
    conditions); rows keyed by (method, id)."""

    name: ClassVar[str] = "accelerate"
    dataset: str
    heads: list[tuple[int, int]]  # the head set's ranking
    plans: dict[str, KVPlan | None]
    budget: float
    prefill: bool
    query_agnostic: bool
    seed: int
    max_new_tokens: int
    batch_size: int = 1

    @property
    def setting(self) -> dict[str, Any]:
        return {"budget": self.budget, "prefill": self.prefill, "query_agnostic": self.query_agnostic}

    def settings(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {"model": adapter.name, "dataset": self.dataset, "heads": self.heads, **self.setting, "seed": self.seed}

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {"methods": list(self.plans), "max_new_tokens": self.max_new_tokens}

    def keys(self, sample: Sample) -> list[Hashable]:
        return [(method, sample.id) for method in self.plans]

    def store(self, out: Path | None, shard: Shard, position: Position) -> JsonRows:
        order = {m: i for i, m in enumerate(self.plans)}
        path = RunFolder(out).rows(self.name) if out is not None else None
        return JsonRows(
            path,
            lambda r: (r["method"], r["id"]),
            lambda r: (position(r["id"]), order.get(r["method"], len(order)), r["method"]),
            shard,
        )

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        shape = adapter.shape

        def work(batch: list[Sample], done: set[Hashable]) -> Iterator[tuple[Any, int]]:
            for sample in batch:
                for method, plan in self.plans.items():
                    if (method, sample.id) in done:
                        continue
                    share = 1.0 if plan is None else kv_fraction(plan, shape.n_layers, shape.n_kv_heads)
                    row = {"method": method, "id": sample.id, **self.setting, "visual_kv_share": share}
                    row.update(_run_one(adapter, sample, plan, self.max_new_tokens, self.query_agnostic))
                    yield [row], 1

        yield work

    def summarise(
        self, adapter: ChatAdapter, samples: list[Sample], rows: Any, out: Path | None, shard: Shard
    ) -> dict[str, Any] | None:
        return {**self.setting, "methods": summarize(rows)} if shard.main else None

    def publish(self, folder: RunFolder, summary: dict[str, Any], samples: list[Sample]) -> None:
        super().publish(folder, summary, samples)
        kv_tradeoff(summary["methods"], f"accuracy vs KV kept at budget {self.budget:g}", folder.figure(self.name))


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
    under a distributed launch: experiments/runs.py; timings then share the machine), then the summary
    per method to out/accelerate.json and out/accelerate.png. Progress counts (method, sample) rows."""
    plans = method_plans(adapter.model, headset, budget, methods or list(KV_METHODS.names()), seed, prefill)
    study = AccelerateStudy(dataset, headset.ranking, plans, budget, prefill, query_agnostic, seed, max_new_tokens)
    return run_study(study, adapter, samples, out, shard, on_progress).rows


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
    order = {m: i for i, m in enumerate(KV_METHODS.names())}
    return sorted(table, key=lambda t: order.get(t["method"], len(order)))

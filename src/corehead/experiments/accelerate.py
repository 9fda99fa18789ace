"""CoRe-guided KV compression against full attention and the methods users would otherwise pick.

Methods, all at the same total visual KV budget as `core` (the share of (layer, KV head, visual token)
entries kept), on the same samples, interleaved sample by sample so timings share conditions:

- `full`: the model as is (native attention, dense cache);
- `core`: KV heads serving a CoRe head keep every visual token, the others `budget` of them (snap);
- `random`: the same with as many KV heads drawn at random, outside the CoRe KV heads, in place of the
  CoRe ones; `seeds` draws (draw d seeded `seed + d`), each its own rows;
- `bottom`: the same with as many of the lowest-scored KV heads in place of the CoRe ones;
- `uniform`: every KV head keeps the same share (SnapKV-style);
- `sparsemm`: per-KV-head shares proportional to the heads' scores (SparseMM-style);
- `duo`: CoRe KV heads full, the others a few first and the last visual tokens (DuoAttention-style);
- `fastv`: the first layers full, every KV head of later layers the same top visual tokens by the last
  prompt row's attention (FastV-style ranking, applied to the cache).

Each method is a small class in experiments/kv_methods/, registered in `KV_METHODS`.

Query-aware (default): the whole prompt is prefilled at once, so the selection sees the question.
Query-agnostic: the visual input is prefilled and compressed first, the question comes after (a second
turn over the same image, document or video), as kvpress evaluates.

Held out: the samples the head set was scored on are left out (experiments/heldout.py), unless
`allow_overlap` keeps them; the manifest and RUN/accelerate.json record which (`held_out`).

Rows (method, draw, sample, answer, correct, prefill seconds, decode seconds per token, KV bytes kept and
full) go to RUN/accelerate.jsonl as produced; a rerun skips the rows already there. The summary per
method (`summarize`) goes to RUN/accelerate.json and RUN/accelerate.png when the run is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import DynamicCache

from corehead.attention.hybrid import KVPlan, hybrid_plan, kv_fraction
from corehead.data.sample import Sample
from corehead.experiments.accelerate_summary import summarize
from corehead.experiments.heldout import held_out
from corehead.experiments.kv_methods import KV_METHODS, KVBudget, plan_method
from corehead.experiments.runs import Shard
from corehead.experiments.study import JsonRows, Position, Study, Work, run_study
from corehead.heads import HeadSet
from corehead.metrics.tasks import score_answer
from corehead.models.base import SEQUENCE_KEYS, ChatAdapter, Encoded
from corehead.models.shape import ModelShape
from corehead.plots import kv_tradeoff
from corehead.runfolder import RunFolder

__all__ = [
    "KV_METHODS",
    "SEQUENCE_KEYS",
    "Arm",
    "accelerate",
    "arms_per_sample",
    "forward_times",
    "method_arms",
    "summarize",
]


@dataclass(frozen=True)
class Arm:
    """One way every sample is answered: a method's plan (None: the model as is) and, for a drawn method
    (`KVMethod.drawn`), which draw it is and the seed it was drawn with."""

    method: str
    plan: KVPlan | None
    draw: int | None = None
    seed: int | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return self.method, self.draw


def method_arms(
    model: Any,
    headset: HeadSet,
    budget: float,
    methods: list[str],
    seed: int = 0,
    prefill: bool = False,
    seeds: int = 3,
) -> list[Arm]:
    """An arm per method, `seeds` of them (draw d seeded `seed + d`) per drawn method, every one at the total
    visual KV share of `core`; with `prefill`, reduced heads attend only to their kept tokens in the prefill
    too."""
    unknown = [m for m in methods if m not in KV_METHODS.names()]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {KV_METHODS.help()}")
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget is a share of the visual tokens, between 0 and 1; got {budget}")
    if seeds < 1 and any(KV_METHODS.get(m).drawn for m in methods):
        raise ValueError(f"seeds: a drawn method needs at least one draw; got {seeds}")
    kv = KVBudget.of(ModelShape.of(model), headset, budget, seed, prefill)
    arms = []
    for method in methods:
        if not KV_METHODS.get(method).drawn:
            arms.append(Arm(method, plan_method(method, kv)))
            continue
        for draw in range(seeds):
            arms.append(Arm(method, plan_method(method, replace(kv, seed=seed + draw)), draw, seed + draw))
    return arms


def arms_per_sample(methods: list[str], seeds: int) -> int:
    """How many rows each sample gets (progress bars): one per method, `seeds` per drawn method."""
    return sum(seeds if KV_METHODS.get(m).drawn else 1 for m in methods)


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
    """Every sample under every arm's plan, one sample at a time (arms interleaved, so timings share
    conditions); rows keyed by (method, draw, id)."""

    name: ClassVar[str] = "accelerate"
    dataset: str
    heads: list[tuple[int, int]]  # the head set's ranking
    arms: list[Arm]
    budget: float
    prefill: bool
    query_agnostic: bool
    seed: int
    seeds: int
    max_new_tokens: int
    held_out: dict[str, Any]  # HeldOut.record()
    batch_size: int = 1

    @property
    def setting(self) -> dict[str, Any]:
        return {"budget": self.budget, "prefill": self.prefill, "query_agnostic": self.query_agnostic}

    def settings(self, adapter: ChatAdapter) -> dict[str, Any]:
        held = {"allow_overlap": self.held_out["allow_overlap"]}
        about = {"model": adapter.name, "dataset": self.dataset, "heads": self.heads, **self.setting, **held}
        return {**about, "seed": self.seed}  # more or fewer --seeds reuse the draws done (rows keyed by draw)

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        every = adapter.shape.kv_heads()
        draws: dict[str, list[dict[str, Any]]] = {}  # per drawn method: each draw's seed, the KV heads it keeps
        for arm in self.arms:
            if arm.draw is not None and arm.plan is not None:
                whole = [list(kv) for kv in every if kv not in arm.plan.budgets]
                draws.setdefault(arm.method, []).append({"draw": arm.draw, "seed": arm.seed, "full_kv_heads": whole})
        methods = list(dict.fromkeys(arm.method for arm in self.arms))
        held = {"held_out": self.held_out, "seeds": self.seeds, "draws": draws}
        return {"methods": methods, "max_new_tokens": self.max_new_tokens, **held}

    def keys(self, sample: Sample) -> list[Hashable]:
        return [(*arm.key, sample.id) for arm in self.arms]

    def store(self, out: Path | None, shard: Shard, position: Position) -> JsonRows:
        order = {arm.key: i for i, arm in enumerate(self.arms)}
        path = RunFolder(out).rows(self.name) if out is not None else None

        def key(r: dict[str, Any]) -> tuple[str, int | None, str]:
            return r["method"], r.get("draw"), r["id"]

        return JsonRows(
            path, key, lambda r: (position(r["id"]), order.get(key(r)[:2], len(order)), repr(key(r))), shard
        )

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        shape = adapter.shape

        def work(batch: list[Sample], done: set[Hashable]) -> Iterator[tuple[Any, int]]:
            for sample in batch:
                for arm in self.arms:
                    if (*arm.key, sample.id) in done:
                        continue
                    share = 1.0 if arm.plan is None else kv_fraction(arm.plan, shape.n_layers, shape.n_kv_heads)
                    row: dict[str, Any] = {"method": arm.method, "draw": arm.draw, "draw_seed": arm.seed}
                    row.update({"id": sample.id, **self.setting, "visual_kv_share": share})
                    row.update(_run_one(adapter, sample, arm.plan, self.max_new_tokens, self.query_agnostic))
                    yield [row], 1

        yield work

    def rows_of_arms(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows of this run's arms (a folder may hold rows of methods or draws run before)."""
        keys = {arm.key for arm in self.arms}
        return [r for r in rows if (r["method"], r.get("draw")) in keys]

    def summarise(
        self, adapter: ChatAdapter, samples: list[Sample], rows: Any, out: Path | None, shard: Shard
    ) -> dict[str, Any] | None:
        if not shard.main:
            return None
        held = {"seeds": self.seeds, "held_out": self.held_out}
        return {**self.setting, **held, "methods": summarize(self.rows_of_arms(rows))}

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
    seeds: int = 3,
    allow_overlap: bool = False,
) -> list[dict[str, Any]]:
    """Every held-out sample (those `headset` was scored on are left out unless `allow_overlap`) under every
    method, `seeds` draws of a drawn one (`random`), interleaved; rows go to out/accelerate.jsonl (resumable,
    sharded under a distributed launch: experiments/runs.py; timings then share the machine), then the
    summary per method to out/accelerate.json and out/accelerate.png. Progress counts (arm, sample) rows."""
    held = held_out(samples, headset, allow_overlap)
    arms = method_arms(adapter.model, headset, budget, methods or list(KV_METHODS.names()), seed, prefill, seeds)
    setting = (budget, prefill, query_agnostic, seed, seeds, max_new_tokens, held.record())
    study = AccelerateStudy(dataset, headset.ranking, arms, *setting)
    return study.rows_of_arms(run_study(study, adapter, held.samples, out, shard, on_progress).rows)

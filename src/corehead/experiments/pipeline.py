"""A whole study of a model, as `corehead study` and `corehead demo` run it: accuracy, then per domain its
CoRe heads, whether cutting them hurts, and what keeping full visual KV only for them saves.

    out/predictions-seed{seed}.jsonl   answers to the evaluation samples
    out/score-D/     a scoring run on domain D's scoring samples (heads.json, heads.png, maps of 4 samples)
    out/attribute-D/ the causal ranking of the heads on the same samples (attribute.json, heads.json)
    out/ablate-D/    top-k, bottom-k and random-k heads of both rankings cut on D's test samples (ablation.json, .png)
    out/accelerate-D/  KV compression methods at one budget on D's test samples (accelerate.json, .png)
    out/summary.json the numbers of all of them

Every folder is the one the single command writes with the same options, and every stage resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corehead.data.sample import Sample
from corehead.experiments.ablate import ablate, parse_k, plan_conditions
from corehead.experiments.ablate import summarize as summarize_ablation
from corehead.experiments.accelerate import accelerate, arms_per_sample
from corehead.experiments.accelerate import summarize as summarize_acceleration
from corehead.experiments.attribute import attribute
from corehead.experiments.evaluate import evaluate
from corehead.experiments.runs import Shard, current_shard
from corehead.experiments.score import ScoreOptions, score_and_select
from corehead.experiments.study import share
from corehead.heads import HeadSet, compare_rankings
from corehead.models.base import ChatAdapter
from corehead.runfolder import RunFolder

Advance = Callable[..., None]  # advance(n=1)
Progress = Callable[[str, int], AbstractContextManager[Advance]]  # progress(description, total)


@dataclass(frozen=True)
class PipelineOptions:
    """The study's settings: what is recorded in summary.json (model, data, seed) and how each stage runs."""

    model: str = "builtin"
    data: str = "synthetic:all"
    seed: int = 0
    score_seed: int | None = None  # the seed the scoring samples were drawn with (None: `seed`)
    n_ablate: int = 40  # test samples per domain in the ablation
    n_accelerate: int = 20  # test samples per domain in the KV compression comparison
    ks: str = "5%,10%"
    seeds: int = 3  # random control sets per k
    mode: str = "zero"
    budget: float = 0.1
    methods: tuple[str, ...] = ("full", "core", "uniform", "duo", "bottom")
    prefill: bool = True  # compressed in the prefill too: decode-only compression leaves short answers alone
    max_new_tokens: int = 4  # answers under ablation and compression
    eval_max_new_tokens: int = 16
    eval_batch_size: int = 32
    ablate_batch_size: int = 32
    maps: int = 4  # attention maps kept per scoring run, for the report's overlays
    query: str = "question"  # the query rows that rank heads (every group is recorded)
    metric: str = "ram"
    attribute: str | None = "atp"  # the causal ranking's method (None: no causal ranking)

    def dataset(self, domain: str) -> str:
        """The dataset label of one domain's runs ('synthetic:scenes' for synthetic:all)."""
        return f"synthetic:{domain}" if self.data.startswith("synthetic:") else f"{self.data}:{domain}"


def run_pipeline(
    adapter: ChatAdapter,
    score_sets: dict[str, list[Sample]],
    test_sets: dict[str, list[Sample]],
    eval_samples: list[Sample],
    out: Path,
    options: PipelineOptions,
    progress: Progress,
) -> dict[str, Any]:
    """Evaluate, then per domain (the keys of `score_sets`) score its heads on `score_sets[D]`, ablate them
    on the first `n_ablate` of `test_sets[D]` and compare KV methods on the first `n_accelerate`; writes
    out/summary.json and returns it."""
    missing = sorted(set(score_sets) - set(test_sets))
    if missing:
        raise ValueError(f"no test samples for domain(s) {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    shard = current_shard()
    with progress("answering", share(eval_samples, options.eval_batch_size, shard)) as advance:
        predictions = RunFolder(out).predictions(options.seed)
        answering = (options.eval_batch_size, options.eval_max_new_tokens, advance, shard)
        result = evaluate(adapter, eval_samples, predictions, *answering)
    summary: dict[str, Any] = {
        "model": options.model,
        "data": options.data,
        "seed": options.seed,
        "n": result.n,
        "accuracy": result.accuracy,
        "by_domain": result.by_domain(),
    }
    stages = _Stages(adapter, out, options, progress, shard)
    heads = {domain: stages.score(domain, chosen) for domain, chosen in score_sets.items()}
    summary["core_heads"] = {domain: headset.selected for domain, headset in heads.items()}
    causal = {d: stages.attribute(d, score_sets[d]) for d in heads} if options.attribute else {}
    if causal:
        summary["causal_heads"] = {domain: headset.selected for domain, headset in causal.items()}
        summary["agreement"] = {d: stages.agreement(d) for d in causal}
    summary["ablation"] = {d: stages.ablate(d, h, test_sets[d], causal.get(d)) for d, h in heads.items()}
    summary["acceleration"] = {d: stages.accelerate(d, h, test_sets[d]) for d, h in heads.items()}
    if shard.main:
        RunFolder(out).study_summary.write_text(json.dumps(summary, indent=2))
    return summary


@dataclass(frozen=True)
class _Stages:
    """The per-domain stages, each into its run folder under `out` with its progress bar."""

    adapter: ChatAdapter
    out: Path
    options: PipelineOptions
    progress: Progress
    shard: Shard  # this process's part of every stage (experiments/runs.py)

    def score(self, domain: str, samples: list[Sample]) -> HeadSet:
        options = self.options
        with self.progress(
            f"scoring heads on {domain}", share(samples, ScoreOptions().batch_size, self.shard)
        ) as advance:
            headset, _ = score_and_select(
                self.adapter,
                samples,
                RunFolder(self.out).stage("score", domain).path,
                options.dataset(domain),
                query=options.query,
                metric=options.metric,
                options=ScoreOptions(maps=options.maps),
                on_progress=advance,
                shard=self.shard,
                seed=options.seed if options.score_seed is None else options.score_seed,
            )
        return headset

    def attribute(self, domain: str, samples: list[Sample]) -> HeadSet:
        """The causal ranking on the scoring samples (the study's ablation mode, its method)."""
        options = self.options
        method = options.attribute or "atp"
        folder = RunFolder(self.out).stage("attribute", domain)
        with self.progress(f"causal ranking on {domain} ({method})", share(samples, 8, self.shard)) as advance:
            summary = attribute(
                self.adapter,
                samples,
                folder.path,
                method=method,
                mode=options.mode,
                dataset=options.dataset(domain),
                seed=options.seed if options.score_seed is None else options.score_seed,
                on_progress=advance,
                shard=self.shard,
            )
        headset: HeadSet = summary["headset"]
        return headset

    def agreement(self, domain: str) -> list[dict[str, Any]]:
        """How well each RAM ranking of the scoring run predicts the causal one (compare_rankings; the main
        process, which writes the summary, reads the runs' files once every stage is published)."""
        if not self.shard.main:
            return []
        folder = RunFolder(self.out)
        return compare_rankings(folder.stage("score", domain).path, folder.stage("attribute", domain).path, draws=300)

    def ablate(
        self, domain: str, headset: HeadSet, samples: list[Sample], causal: HeadSet | None = None
    ) -> list[dict[str, Any]]:
        options = self.options
        chosen = samples[: options.n_ablate]
        ks = parse_k(options.ks, len(headset.ranking))
        rankings = {f"{headset.metric}:{headset.query}": headset.ranking}
        if causal is not None:  # ranked on the same samples as RAM: both held out from the test samples
            rankings[causal.metric] = causal.ranking
        total = share(chosen, options.ablate_batch_size, self.shard) * len(plan_conditions(rankings, ks, options.seeds))
        with self.progress(f"ablating heads on {domain}", total) as advance:
            rows = ablate(
                self.adapter,
                chosen,
                rankings,
                RunFolder(self.out).stage("ablate", domain).path,
                ks,
                seeds=options.seeds,
                mode=options.mode,
                batch_size=options.ablate_batch_size,
                max_new_tokens=options.max_new_tokens,
                on_progress=advance,
                dataset=options.dataset(domain),
                heads=str(RunFolder(self.out).stage("score", domain).heads),
                headset=headset,
                shard=self.shard,
            )
        return summarize_ablation(rows)

    def accelerate(self, domain: str, headset: HeadSet, samples: list[Sample]) -> list[dict[str, Any]]:
        options = self.options
        chosen = samples[: options.n_accelerate]
        arms = arms_per_sample(list(options.methods), options.seeds)
        with self.progress(f"KV compression on {domain}", share(chosen, 1, self.shard) * arms) as advance:
            rows = accelerate(
                self.adapter,
                chosen,
                headset,
                RunFolder(self.out).stage("accelerate", domain).path,
                options.budget,
                list(options.methods),
                max_new_tokens=options.max_new_tokens,
                on_progress=advance,
                prefill=options.prefill,
                dataset=options.dataset(domain),
                shard=self.shard,
                seeds=options.seeds,
            )
        return summarize_acceleration(rows)

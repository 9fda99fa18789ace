"""`corehead study`: the whole study on any model and dataset: find the CoRe heads of each domain on some
samples, then cut them (ablation) and keep full visual KV only for them (acceleration) on held-out ones,
and write the report. Resumable: every stage is a run folder that a rerun continues."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from corehead.cli.accelerate import kv_methods
from corehead.cli.console import emit_json, log, out, progress
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, Group, ModelOptions, Opt, RunOptions, options, run_options
from corehead.cli.tables import (
    accuracy_table,
    print_agreement,
    print_core_heads,
    print_kv_comparison,
    print_sweep,
)
from corehead.runfolder import RunFolder


@dataclass(frozen=True)
class StudyOptions:
    """How many samples per domain each stage uses, and the ablation and acceleration settings."""

    n_score: int = 40
    n_ablate: int = 40
    n_accelerate: int = 20
    ks: str = "5%,10%"
    seeds: int = 3
    mode: str = "zero"
    budget: float = 0.1
    methods: str = "full,core,uniform,duo,bottom"
    prefill: bool = True
    query: str = "question"
    metric: str = "ram"
    attribute: str = "atp"

    def pipeline(self, model: str, data: str, seed: int, batch_size: int) -> Any:
        """The experiments' PipelineOptions for these settings (mode and methods checked by their registries)."""
        from corehead.experiments.ablate import MODES
        from corehead.experiments.pipeline import PipelineOptions

        MODES.get(self.mode)
        same = ("n_ablate", "n_accelerate", "ks", "seeds", "mode", "budget", "prefill", "metric")  # named alike
        methods = tuple(kv_methods(self.methods))
        if self.attribute not in ("atp", "exact", "none"):
            raise ValueError(f"--attribute must be atp, exact or none; got {self.attribute!r}")
        settings = {f: getattr(self, f) for f in same} | {"query": self.query.replace("-", "_")}
        settings["attribute"] = None if self.attribute == "none" else self.attribute
        return PipelineOptions(
            model, data, seed, methods=methods, eval_batch_size=batch_size, ablate_batch_size=batch_size, **settings
        )


STUDY = Group(
    StudyOptions,
    {
        "n_score": Opt(("--n-score",), "Samples per domain scored for CoRe heads."),
        "n_ablate": Opt(("--n-ablate",), "Samples per domain in the ablation sweep."),
        "n_accelerate": Opt(("--n-accelerate",), "Samples per domain in the KV compression comparison."),
        "ks": Opt(("--k",), "Heads cut per condition: shares of all heads and/or counts."),
        "seeds": Opt(("--seeds",), "Random control sets per k."),
        "mode": Opt(("--mode",), "How heads are cut: {modes}."),
        "budget": Opt(("--budget",), "Share of visual tokens kept by the KV heads of non-CoRe heads."),
        "methods": Opt(("--methods",), "KV methods compared, a comma list of {kv_methods}."),
        "prefill": Opt(("--prefill/--no-prefill",), "Reduced heads see only their kept tokens in the prefill too."),
        "query": Opt(("--query",), "Query rows that rank heads: all, question, prompt-end or answer."),
        "metric": Opt(("--metric",), "ram or ram_minus_distractor."),
        "attribute": Opt(
            ("--attribute",),
            "Causal ranking of the heads on the scoring samples, cut top-k beside RAM's: atp (one forward and "
            "backward per batch), exact (each head cut alone: heads + 1 forwards per batch) or none.",
        ),
    },
)
RUN = run_options(
    Path("runs/study"),
    "Run folder (summary.json, report.html, score-*/, attribute-*/, ablate-*/, accelerate-*/).",
    32,
    "Samples per batch when answering (evaluation and ablation).",
)
DATA_LIMIT = Opt(("--limit",), "Load at most this many samples (all domains together).")


@options(model=MODEL, data=DATA.but(limit=DATA_LIMIT), run=RUN, plan=STUDY)
def study(model: ModelOptions, data: DataOptions, run: RunOptions, plan: StudyOptions) -> None:
    """Score each domain's first --n-score samples for CoRe heads, then ablate and compress the KV of them on
    the held-out samples that follow; writes summary.json and report.html. A rerun resumes."""
    began = time.time()
    settings = plan.pipeline(model.model, data.data, data.seed, run.batch_size)
    with processes(run.num_processes) as shard:
        split = held_out(data.load(), plan)
        summary = run_and_report(model.load(), split, run.folder, settings, began, shard.main)
        if not shard.main:
            return
    show(summary, run.folder, plan, f"{model.model} on {data.data}", run.as_json, "study")


class Split(NamedTuple):
    """The samples of a study: per domain those scored and those tested, and those evaluated."""

    scored: dict[str, list[Any]]
    tested: dict[str, list[Any]]
    evaluated: list[Any]


def held_out(samples: list[Any], study: StudyOptions) -> Split:
    """Per domain (in order of first appearance): the first n_score samples to score, then the ones tested
    (and evaluated)."""
    by_domain: dict[str, list[Any]] = {}
    for sample in samples:
        by_domain.setdefault(sample.domain, []).append(sample)
    tested = max(study.n_ablate, study.n_accelerate)
    for domain, group in by_domain.items():
        if len(group) <= study.n_score:
            raise ValueError(
                f"domain {domain!r} has {len(group)} samples: none left to test after --n-score {study.n_score}"
            )
    scored = {d: group[: study.n_score] for d, group in by_domain.items()}
    test_sets = {d: group[study.n_score : study.n_score + tested] for d, group in by_domain.items()}
    return Split(scored, test_sets, [s for group in test_sets.values() for s in group])


def run_and_report(
    adapter: Any, split: Split, folder: Path, settings: Any, began: float, main: bool = True
) -> dict[str, Any]:
    """Every stage of the study into `folder` (this process's share of it), then, on the main process, its
    report; returns summary.json's content (with the report's path and the wall time of this launch: a
    rerun resumes, so it is shorter)."""
    from corehead.experiments.pipeline import run_pipeline as run_stages
    from corehead.report.html import write_report

    summary: dict[str, Any] = run_stages(adapter, *split, folder, settings, progress)
    if not main:
        return summary
    summary["report"] = str(write_report([folder], folder / "report.html"))
    summary["wall_s"] = round(time.time() - began, 1)
    RunFolder(folder).study_summary.write_text(json.dumps(summary, indent=2))
    return summary


def show(summary: dict[str, Any], folder: Path, study: StudyOptions, title: str, as_json: bool, name: str) -> None:
    """The study's summary as JSON, or its tables: accuracy, CoRe heads, ablation sweep, KV compression."""
    from corehead.heads import HeadSet

    if as_json:
        emit_json(summary)
        return
    out.print(accuracy_table(title, summary["by_domain"], summary))
    headsets = {d: HeadSet.load(RunFolder(folder).stage("score", d).heads) for d in summary["core_heads"]}
    print_core_heads(headsets, study.n_score)
    for domain, rows in summary.get("agreement", {}).items():
        print_agreement(rows, RunFolder(folder).stage("attribute", domain).path)
    print_sweep(summary["ablation"], study.n_ablate, study.seeds, study.mode)
    when = "prefill and decode" if study.prefill else "decode"
    kv = f"visual KV at budget {study.budget:g} for non-CoRe KV heads, {when} ({study.n_accelerate} samples per domain)"
    print_kv_comparison(summary["acceleration"], kv_methods(study.methods), kv)
    log(
        f"results: {folder}/ (summary.json, predictions-seed{summary['seed']}.jsonl, score-*/, attribute-*/, ablate-*/, "
        "accelerate-*/)"
    )
    log(f"report: {summary['report']} ({name} took {summary['wall_s']:.0f} s)")

"""`corehead demo`: the study on the built-in model and synthetic data, on the same samples as ever."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from corehead.cli.console import log
from corehead.cli.options import JsonOpt, ModelOptions, SeedOpt, options
from corehead.cli.study import STUDY, Split, StudyOptions, run_and_report, show

NOpt = Annotated[int, typer.Option("--n", help="Held-out samples per synthetic domain.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run folder for the demo's results.")]
STAGES = STUDY.but(ks=None, seeds=None, mode=None, budget=None, methods=None, prefill=None, query=None, metric=None)


ScoreSeedOpt = Annotated[int, typer.Option("--score-seed", help="Seed of the samples the CoRe heads are scored on.")]


@options(study=STAGES)
def demo(
    study: StudyOptions,
    n: NOpt = 100,
    seed: SeedOpt = 0,
    score_seed: ScoreSeedOpt = 1,
    out_dir: OutOpt = Path("runs/demo"),
    as_json: JsonOpt = False,
) -> None:
    """End to end on the built-in model: accuracy per domain, its CoRe heads (scored on samples of
    --score-seed), whether cutting them hurts and what keeping full visual KV only for them saves (on
    held-out samples of --seed)."""
    from corehead.data import synthetic

    if score_seed == seed:
        raise typer.BadParameter("score on other samples than those tested: another seed", param_hint="--score-seed")
    began = time.time()
    settings = replace(study.pipeline("builtin", "synthetic:all", seed, 32), score_seed=score_seed)
    tested = {d: list(synthetic.generate(d, n, seed=seed)) for d in synthetic.DOMAINS}
    scored = {d: list(synthetic.generate(d, study.n_score, seed=score_seed)) for d in synthetic.DOMAINS}
    samples = [s for chosen in tested.values() for s in chosen]
    log(f"synthetic samples ({', '.join(synthetic.DOMAINS)}): {study.n_score} per domain scored (seed {score_seed}),")
    log(f"  {n} per domain held out for accuracy, ablation and KV compression (seed {seed})")
    adapter = ModelOptions().load()
    summary = run_and_report(adapter, Split(scored, tested, samples), out_dir, settings, began)
    show(summary, out_dir, study, "built-in model, held-out synthetic samples", as_json, "demo")

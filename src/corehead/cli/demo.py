"""`corehead demo`: the study on the built-in model and synthetic data, on the same samples as ever."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from corehead.cli.console import log
from corehead.cli.options import JsonOpt, ModelOptions, SeedOpt, options
from corehead.cli.study import STUDY, Split, StudyOptions, run_and_report, show

NOpt = Annotated[int, typer.Option("--n", help="Held-out samples per synthetic domain.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run folder for the demo's results.")]
STAGES = STUDY.but(ks=None, seeds=None, mode=None, budget=None, methods=None, prefill=None)  # sizes only


@options(study=STAGES)
def demo(
    study: StudyOptions, n: NOpt = 100, seed: SeedOpt = 0, out_dir: OutOpt = Path("runs/demo"), as_json: JsonOpt = False
) -> None:
    """End to end on the built-in model: accuracy per domain, its CoRe heads, whether cutting them hurts,
    and what keeping full visual KV only for them saves."""
    from corehead.data import synthetic

    began = time.time()
    settings = study.pipeline("builtin", "synthetic:all", seed, 32)
    samples = [s for domain in synthetic.DOMAINS for s in synthetic.generate(domain, n, seed=seed)]
    log(f"generated {len(samples)} held-out synthetic samples ({', '.join(synthetic.DOMAINS)}; seed {seed})")
    adapter = ModelOptions().load()
    by_domain = {d: [s for s in samples if s.domain == d] for d in synthetic.DOMAINS}
    scored = {d: chosen[: study.n_score] for d, chosen in by_domain.items()}  # and tested from the first one on
    summary = run_and_report(adapter, Split(scored, by_domain, samples), out_dir, settings, began)
    show(summary, out_dir, study, "built-in model, held-out synthetic samples", as_json, "demo")

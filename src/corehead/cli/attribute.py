"""`corehead attribute`: rank every head by what removing it alone does to the gold answer (a causal ranking)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corehead.cli.ablate import ReferenceOpt, ReferenceSeedOpt, reference_set
from corehead.cli.console import emit_json, log, progress
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, ModelOptions, Opt, RunOptions, options, run_options
from corehead.cli.tables import print_headset
from corehead.runfolder import RunFolder

RUN = run_options(Path("runs/attribute"), "Run folder (attribute.jsonl, attribute.json, heads.json).", 8)
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="exact: each head cut alone on every sample ((heads + 1) forwards per batch); atp: attribution "
        "patching, one forward and backward per batch (a linear estimate).",
    ),
]
ModeOpt = Annotated[
    str, typer.Option("--mode", help="How a head is cut: zero, mean or mask-region (exact takes any unpaired mode).")
]
FractionOpt = Annotated[float, typer.Option("--fraction", help="Share of heads selected in heads.json.")]


@options(model=MODEL, data=DATA.but(limit=Opt(("--limit",), "Attribute on at most this many samples.")), run=RUN)
def attribute(
    *,
    method: MethodOpt = "exact",
    mode: ModeOpt = "zero",
    fraction: FractionOpt = 0.05,
    reference: ReferenceOpt = 32,
    reference_seed: ReferenceSeedOpt = None,
    model: ModelOptions,
    data: DataOptions,
    run: RunOptions,
) -> None:
    """Every head's causal effect on the gold answer's log-probability, per sample with bootstrap CIs;
    RUN/heads.json ranks heads by it (metric causal:MODE:logprob) for every command that takes --heads."""
    from corehead.experiments.attribute import METHODS, attribute, cost
    from corehead.experiments.modes import ablation_mode
    from corehead.experiments.study import share

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    with processes(run.num_processes) as shard:
        samples = data.load()
        refs = reference_set(data, samples, reference, reference_seed) if ablation_mode(mode).reference else None
        adapter = model.load()
        shape = adapter.shape
        log(f"cost: {cost(len(samples), shape.n_layers * shape.n_heads, run.batch_size, method)}")
        with progress(f"attributing ({method}, {mode})", share(samples, run.batch_size, shard)) as advance:
            summary = attribute(
                adapter,
                samples,
                run.folder,
                method=method,
                mode=mode,
                dataset=data.data,
                batch_size=run.batch_size,
                reference=refs,
                seed=data.seed,
                fraction=fraction,
                skip_invalid=data.skip_invalid,
                on_progress=advance,
                shard=shard,
            )
        if not shard.main:
            return
    headset = summary["headset"]
    if run.as_json:
        emit_json(
            {k: v for k, v in summary.items() if k not in ("headset", "effect", "lost")}
            | {"heads": str(RunFolder(run.folder).heads)}
        )
        return
    print_headset(headset)
    log(
        f"{len(summary['needed'])} heads needed (95% CI of the effect above 0); clean teacher-forced accuracy "
        f"{summary['clean_correct']:.2f} over {summary['n']} samples"
    )
    log(f"results: {run.folder}/ (attribute.jsonl, attribute.json, heads.json, heads.png)")

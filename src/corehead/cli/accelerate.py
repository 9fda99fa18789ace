"""`corehead accelerate`: full visual KV only for CoRe heads vs other methods at the same KV budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corehead.cli.console import emit_json, log, progress
from corehead.cli.heads import HeadsOpt, OverlapOpt, load_headset
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, ModelOptions, RunOptions, options, run_options
from corehead.cli.tables import print_acceleration
from corehead.runfolder import RunFolder

RUN = run_options(Path("runs/accelerate"), "Run folder (accelerate.jsonl, accelerate.json).", None)
BudgetOpt = Annotated[
    float, typer.Option("--budget", help="Share of visual tokens kept by the KV heads of non-CoRe heads.")
]
MethodsOpt = Annotated[str | None, typer.Option("--methods", help="Comma list of {kv_methods} (default: all).")]
TokensOpt = Annotated[int, typer.Option("--max-new-tokens")]
PrefillOpt = Annotated[
    bool, typer.Option("--prefill", help="Reduced heads see only their kept tokens in the prefill too.")
]
AgnosticOpt = Annotated[
    bool, typer.Option("--query-agnostic", help="Compress the visual context before the question is seen.")
]
SeedsOpt = Annotated[
    int,
    typer.Option(
        "--seeds",
        help="Draws of the random method (KV heads drawn outside the CoRe ones), each its own rows; the summary "
        "averages over draws, with intervals over samples and draws.",
    ),
]


@options(model=MODEL, data=DATA, run=RUN)
def accelerate(
    heads: HeadsOpt,
    model: ModelOptions,
    data: DataOptions,
    run: RunOptions,
    budget: BudgetOpt = 0.1,
    methods: MethodsOpt = None,
    max_new_tokens: TokensOpt = 8,
    prefill: PrefillOpt = False,
    query_agnostic: AgnosticOpt = False,
    seeds: SeedsOpt = 3,
    allow_overlap: OverlapOpt = False,
) -> None:
    """Full visual KV only for CoRe heads vs full attention and other methods at the same KV budget, on
    samples the head set was not scored on; every method paired with full and core, sample by sample."""
    from corehead.experiments.accelerate import KV_METHODS, arms_per_sample
    from corehead.experiments.accelerate import accelerate as run_accelerate
    from corehead.experiments.heldout import held_out
    from corehead.experiments.study import share

    chosen = None if methods is None else kv_methods(methods)
    with processes(run.num_processes) as shard:
        headset = load_headset(heads)
        samples = data.load()
        held = held_out(samples, headset, allow_overlap)
        log(held.message())
        adapter = model.load()
        rows = share(held.samples, 1, shard) * arms_per_sample(chosen or list(KV_METHODS.names()), seeds)
        with progress("answering with each method", rows) as advance:
            compare = (adapter, samples, headset, run.folder, budget, chosen, max_new_tokens)
            run_accelerate(*compare, on_progress=advance, prefill=prefill, query_agnostic=query_agnostic,
                           dataset=data.data, shard=shard, seeds=seeds, allow_overlap=allow_overlap)  # fmt: skip
        if not shard.main:
            return
    result = RunFolder(run.folder).read_summary("accelerate")
    if run.as_json:
        emit_json(result)
        return
    when = ("prefill and decode" if prefill else "decode") + (", question after compression" if query_agnostic else "")
    marked = ", scored samples kept" if held.allowed and held.overlap else ""
    title = f"KV compression at budget {budget:g} in {when} ({len(held.samples)} samples{marked})"
    print_acceleration(result["methods"], title)
    log(f"results: {run.folder}/ (accelerate.jsonl, accelerate.json, accelerate.png)")


def kv_methods(spec: str) -> list[str]:
    """The KV methods named in a comma list, each checked against the registry."""
    from corehead.experiments.accelerate import KV_METHODS

    names = [m.strip() for m in spec.split(",") if m.strip()]
    for name in names:
        KV_METHODS.get(name)
    return names

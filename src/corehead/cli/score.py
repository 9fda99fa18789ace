"""`corehead score`: rank every decoder head by Retrieval Attention Mass and select the CoRe heads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from corehead.cli.console import emit_json, log, out, progress
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, ModelOptions, Opt, RunOptions, options, run_options
from corehead.cli.tables import print_headset
from corehead.runfolder import RunFolder

RUN = run_options(Path("runs/score"), "Run folder (results/, manifest.json, heads.json).", 4)
QueryOpt = Annotated[
    str,
    typer.Option(
        "--query",
        help="Query rows that rank heads: question (default), all, prompt-end, answer or generated "
        "(docs/query-groups.md); every group but generated is recorded, so any can be ranked later.",
    ),
]
MinOverlapOpt = Annotated[
    float,
    typer.Option(
        "--min-overlap", help="Share of a token's cell inside a box for the token to count (binary weighting)."
    ),
]
WeightingOpt = Annotated[
    str,
    typer.Option(
        "--region-weighting",
        help="binary: a token is in a region or not (--min-overlap); fractional: each token weighted by the "
        "share of its cell inside the box.",
    ),
]
MetricOpt = Annotated[str, typer.Option("--metric", help="ram or ram_minus_distractor.")]
FractionOpt = Annotated[float, typer.Option("--fraction", help="Share of heads selected as CoRe heads.")]
CountOpt = Annotated[int | None, typer.Option("--count", help="Select this many heads instead.")]
CorrectOpt = Annotated[
    bool, typer.Option("--correct-only", help="Also rank on correctly answered samples (heads-correct.json).")
]
MapsOpt = Annotated[
    int, typer.Option("--maps", help="Keep every head's attention maps for the first N samples (RUN/maps/).")
]


@options(model=MODEL, data=DATA.but(limit=Opt(("--limit",), "Score at most this many samples.")), run=RUN)
def score(
    *,
    query: QueryOpt = "question",
    metric: MetricOpt = "ram",
    fraction: FractionOpt = 0.05,
    count: CountOpt = None,
    correct_only: CorrectOpt = False,
    maps: MapsOpt = 0,
    min_overlap: MinOverlapOpt = 0.5,
    region_weighting: WeightingOpt = "binary",
    model: ModelOptions,
    data: DataOptions,
    run: RunOptions,
) -> None:
    """Score every decoder head by Retrieval Attention Mass; write RUN/results and RUN/heads.json."""
    from corehead.experiments.score import ScoreOptions, score_and_select
    from corehead.experiments.study import share

    with processes(run.num_processes) as shard:
        samples = data.load()
        adapter = model.load()
        select = (adapter, samples, run.folder, data.data, query.replace("-", "_"), metric, fraction, count)
        scoring = ScoreOptions(
            batch_size=run.batch_size, maps=maps, min_overlap=min_overlap, region_weighting=region_weighting
        )
        with progress("scoring", share(samples, run.batch_size, shard)) as advance:
            headset, scored = score_and_select(*select, scoring, advance, shard=shard, seed=data.seed)
        if correct_only:  # reported both ways: all samples first, then the correctly answered ones
            print_headset(headset)
            log("ranked on the samples the model answers correctly (heads-correct.json):")
            headset, _ = score_and_select(*select, scoring, correct_only=True, shard=shard, seed=data.seed)
        if not shard.main:
            return
    if run.as_json:
        layers = headset.layer_profile().tolist()
        heads = str(RunFolder(run.folder).heads)
        rate = scored.fallback_rate if scored.mapping["regions"] else None
        emit_json(
            {"heads": heads, "n": headset.n_samples, "selected": headset.selected, "layer_profile": layers}
            | {"region_mapping": {**scored.mapping, "fallback_rate": rate}}
        )
        return
    print_headset(headset)
    out.print(_mapping_line(scored.mapping, scoring))
    log(f"results: {run.out}/ (results/*.parquet, manifest.json, heads.json, heads.png)")


def _mapping_line(mapping: dict[str, int], scoring: Any) -> str:
    """How the run's regions were mapped to tokens: how many fell back to their best cells, and the rate."""
    if scoring.region_weighting == "fractional":
        return f"region mapping: {mapping['regions']} evidence regions weighted by each token's share inside the box"
    parts = [
        f"{fell} of {n} {label} regions ({fell / n:.0%})"
        for label, n, fell in (
            ("evidence", mapping["regions"], mapping["fallbacks"]),
            ("distractor", mapping["distractor_regions"], mapping["distractor_fallbacks"]),
        )
        if n
    ]
    return (
        f"region mapping: {' and '.join(parts) or 'no regions'} fell back to their best-overlapping cells "
        f"(no cell had {scoring.min_overlap:g} of its area inside the box)"
    )

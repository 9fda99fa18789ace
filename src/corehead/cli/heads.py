"""`corehead heads show|compare|export`: read, compare and convert head sets (heads.json), compare a scoring
run's RAM rankings with a causal run's head effects; and the --heads option of the commands that use a head
set."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from corehead.cli.console import emit_json, log
from corehead.cli.options import JsonOpt
from corehead.cli.tables import print_agreement, print_headset
from corehead.runfolder import RunFolder

app = typer.Typer(
    help="Show, compare and export head sets (heads.json); compare RAM rankings with causal effects.",
    no_args_is_help=True,
)
HeadsOpt = Annotated[Path, typer.Option("--heads", help="heads.json (or its scoring run folder) that ranks the heads.")]
OverlapOpt = Annotated[
    bool,
    typer.Option(
        "--allow-overlap", help="Keep samples the head set was scored on (excluded by default); the result is marked."
    ),
]


def load_headset(path: Path) -> Any:
    """The HeadSet in heads.json, given the file or its scoring run folder."""
    from corehead.heads import HeadSet

    return HeadSet.load(RunFolder(path).heads if path.is_dir() else path)


def _retrieval_head(headset: Any) -> str:
    from corehead.heads import to_retrieval_head

    return json.dumps(to_retrieval_head(headset))


def _duo(headset: Any) -> str:
    from corehead.heads import to_duo_tsv

    return to_duo_tsv(headset)


EXPORTS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "retrieval-head": ("JSON", _retrieval_head),
    "duo": ("full_attention_heads.tsv", _duo),
}
FORMATS = " or ".join(f"{name} ({what})" for name, (what, _) in EXPORTS.items())


@app.command("show")
def show(
    path: Annotated[Path, typer.Argument(help="A heads.json (or the run folder holding it).")],
    top: Annotated[int, typer.Option("--top", help="Rows of the ranking to print.")] = 10,
) -> None:
    """Print a head set's top heads and layer profile."""
    print_headset(load_headset(path), top)


@app.command("compare")
def compare(
    first: Annotated[
        Path, typer.Argument(help="heads.json of one run (or its run folder); or a scoring run folder with results/.")
    ],
    second: Annotated[
        Path, typer.Argument(help="heads.json of another run (or its run folder); or a causal run folder.")
    ],
    fraction: Annotated[
        float, typer.Option("--fraction", help="Share of heads in each top-k (RAM vs causal effects).")
    ] = 0.05,
    draws: Annotated[int, typer.Option("--draws", help="Bootstrap draws (RAM vs causal effects).")] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Compare two head rankings. Two head sets: Jaccard of the selections and Spearman correlation of the
    rankings (printed as JSON). A scoring run folder and a causal run folder (attribute.jsonl, from corehead
    attribute): how well each RAM ranking (per metric and query group) predicts the heads' causal effects:
    Spearman, top-k precision and recall of the causally needed heads, with 95% bootstrap CIs (pass their
    heads.json files instead for the overlap of the two head sets)."""
    from corehead.heads import compare_rankings, overlap

    if RunFolder(first).results.is_dir() and RunFolder(second).rows("attribute").exists():
        rows = compare_rankings(first, second, fraction=fraction, draws=draws)
        if as_json:
            emit_json({"rankings": [{k: _finite(v) for k, v in row.items()} for row in rows]})
        else:
            print_agreement(rows, second)
        return
    emit_json(overlap(load_headset(first), load_headset(second)))


def _finite(value: Any) -> Any:
    """None for NaN (a recall without needed heads), so the JSON is strict."""
    return None if isinstance(value, float) and math.isnan(value) else value


@app.command("export")
def export(
    path: Annotated[Path, typer.Argument(help="heads.json to export.")],
    to: Annotated[str, typer.Option("--to", help=f"{FORMATS}.")],
    out_file: Annotated[Path, typer.Option("--out", help="File to write.")],
) -> None:
    """Write a head set in a peer's format."""
    if to not in EXPORTS:
        raise ValueError(f"--to must be {' or '.join(EXPORTS)}, got {to!r}")
    headset = load_headset(path)
    out_file.write_text(EXPORTS[to][1](headset))
    log(f"wrote {out_file}")

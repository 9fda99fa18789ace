"""`corehead report`: one self-contained HTML study of run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corehead.cli.console import emit_json, log
from corehead.cli.options import JsonOpt


def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders (score, ablate, accelerate or demo); searched recursively.")
    ],
    out_file: Annotated[
        Path, typer.Option("--out", help="HTML file to write; its plots and summary.json go to <name>_files/.")
    ] = Path("report.html"),
    samples: Annotated[int, typer.Option("--samples", help="Samples with attention maps shown per scoring run.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """One self-contained HTML study of runs: heads, attention overlays, ablation, acceleration, a head explorer."""
    from corehead.report.html import write_report

    path = write_report(runs, out_file, samples)
    files = path.parent / f"{path.stem}_files"
    if as_json:
        emit_json({"report": str(path), "files": str(files)})
        return
    log(f"wrote {path} (plots and summary.json in {files}/)")

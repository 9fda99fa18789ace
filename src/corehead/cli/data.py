"""`corehead data show|synth`: inspect, validate and generate grounded datasets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from corehead.cli.console import emit_json, log, progress
from corehead.cli.options import SeedOpt, SkipOpt, load_samples

app = typer.Typer(help="Inspect, validate and generate grounded datasets.", no_args_is_help=True)


@app.command("show")
def show(
    spec: Annotated[str, typer.Argument(help="synthetic:DOMAIN, a samples.jsonl or its folder.")],
    limit: Annotated[int, typer.Option("--limit", help="How many samples to print.")] = 5,
    seed: SeedOpt = 0,
    skip_invalid: SkipOpt = False,
) -> None:
    """Print loaded samples in corehead's JSONL format, one JSON object per line on stdout."""
    from corehead.data.sample import sample_to_json

    path = Path(spec)
    base = (path if path.is_dir() else path.parent).resolve() if not spec.startswith("synthetic:") else None
    for sample in load_samples(spec, limit, seed, skip_invalid):
        emit_json(sample_to_json(sample, base))


@app.command("synth")
def synth(
    domain: Annotated[str, typer.Option("--domain", help="scenes, pages, clips or all.")],
    n: Annotated[int, typer.Option("--n", help="Number of samples.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for samples.jsonl and images/.")],
    seed: SeedOpt = 0,
) -> None:
    """Write synthetic grounded samples (PNG images + samples.jsonl) that `--data DIR` reads back."""
    from corehead.data import load_dataset
    from corehead.data.sample import write_jsonl

    samples = load_dataset(f"synthetic:{domain}", n=n, seed=seed)
    with progress("writing", len(samples)) as advance:

        def each() -> Iterator[Any]:
            for sample in samples:
                yield sample
                advance()

        path = write_jsonl(each(), out_dir)
    log(f"wrote {len(samples)} samples to {path}")

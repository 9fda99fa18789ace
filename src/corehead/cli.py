"""The `corehead` command line: parses options, calls the library, prints tables or JSON. No logic here."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(
    help="Find, prove and exploit Context-aware Retrieval (CoRe) heads in multimodal LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, validate and generate grounded datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
heads_app = typer.Typer(help="Show, compare and export head sets (heads.json).", no_args_is_help=True)
app.add_typer(heads_app, name="heads")

err = Console(stderr=True)
out = Console()
STATE: dict[str, bool] = {"quiet": False, "debug": False}

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'builtin', a local model folder or a hub id.")]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="synthetic:scenes|pages|clips|all, a samples.jsonl or its folder.")
]
HeadsOpt = Annotated[Path, typer.Option("--heads", help="heads.json (or its scoring run folder) that ranks the heads.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of synthetic data (different seeds, different samples).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="Skip malformed samples (counted) instead of failing.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a checkpoint's own Python code to run.")]
MaxPixelsOpt = Annotated[int | None, typer.Option("--max-pixels", help="Cap the pixels fed per image or page.")]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", help="Keep at most this many frames per video.")]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option("--device-map", help="'auto' spreads a model too large for one GPU over all (default: one device)."),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Weights dtype: float32, bfloat16, float16 or auto.")]
ProcsOpt = Annotated[
    int, typer.Option("--num-processes", help="Shard the samples over N processes (launched with accelerate).")
]


@app.callback()
def _global(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    STATE["quiet"] = quiet
    STATE["debug"] = debug


def emit_json(obj: Any) -> None:
    """One JSON object on one line of stdout, for scripts."""
    sys.stdout.write(json.dumps(obj) + "\n")


def log(message: str) -> None:
    """A status line on stderr (rich markup allowed), silent under --quiet."""
    if not STATE["quiet"]:
        err.print(message, soft_wrap=True, highlight=False)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A progress bar on stderr with counts and ETA; `advance(n)` moves it. Silent under --quiet."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        disable=STATE["quiet"],
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _load_samples(spec: str, n: int | None, seed: int, skip_invalid: bool) -> list[Any]:
    from corehead.data import LoadReport, load_dataset

    report = LoadReport()
    samples = load_dataset(spec, n=n, seed=seed, skip_invalid=skip_invalid, report=report)
    if report.skipped:
        log(f"[yellow]skipped {len(report.skipped)} invalid sample(s):[/yellow]")
        for reason in report.skipped[:20]:
            log(f"  {escape(reason)}")
    if not samples:
        raise ValueError(f"no samples in {spec!r}")
    return samples


def _load_model(
    name: str,
    trust_remote_code: bool = False,
    max_pixels: int | None = None,
    max_frames: int | None = None,
    device_map: str | None = None,
    dtype: str = "float32",
) -> Any:
    """The model on this process's GPU when there is one (or spread with --device-map auto), else the CPU."""
    import torch
    from transformers.utils import logging as hf_logging

    from corehead.models import load_model

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if STATE["quiet"]:
        hf_logging.disable_progress_bar()
    placement: str | dict[str, Any] | None = device_map
    if device_map is None and torch.cuda.is_available():
        placement = {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}
    log(f"loading model {name} ...")
    return load_model(
        name,
        dtype=dtype,
        device_map=placement,
        trust_remote_code=trust_remote_code,
        max_pixels=max_pixels,
        max_frames=max_frames,
    )


DTYPES = ("float32", "bfloat16", "float16", "auto")


def _scale_out(num_processes: int) -> Any:
    """This process's Shard. With N > 1 outside a distributed launch, relaunches the command on N processes
    with accelerate and exits with its status; workers other than the main one run quietly."""
    from corehead.experiments.runs import current_shard

    if num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1, got {num_processes}")
    if num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise typer.Exit(_launch(num_processes))
    shard = current_shard()
    if not shard.main:
        STATE["quiet"] = True
    return shard


def _launch(n: int) -> int:
    """`accelerate launch --num_processes n -m corehead <this command without --num-processes>`."""
    import socket
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--num-processes="):
            skip = False
            continue
        if arg == "--num-processes":
            skip = True
            continue
        args.append(arg)
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(port), "-m", "corehead", *args]
    log(f"running on {n} processes: accelerate launch --num_processes {n} -m corehead {' '.join(args)}")
    return subprocess.call(launch)


def _accuracy_table(title: str, by_domain: dict[str, dict[str, float]], total: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("domain")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    for domain, row in by_domain.items():
        table.add_row(domain, str(int(row["n"])), f"{row['accuracy']:.3f}")
    if len(by_domain) > 1:
        table.add_row("[bold]all[/bold]", str(int(total["n"])), f"[bold]{total['accuracy']:.3f}[/bold]")
    return table


def _run_eval(adapter: Any, samples: list[Any], out_file: Path | None, batch_size: int, shard: Any = None) -> Any:
    from corehead.experiments.evaluate import evaluate

    mine = len(samples) if shard is None or out_file is None else _share(shard, samples, batch_size)
    with progress("answering", mine) as advance:
        return evaluate(adapter, samples, out=out_file, batch_size=batch_size, on_progress=advance, shard=shard)


def _share(shard: Any, samples: list[Any], batch_size: int) -> int:
    """How many of the samples this process works on (for its progress bar)."""
    return sum(len(b) for b in shard.batches(samples, batch_size))


@app.command("eval")
def eval_cmd(
    model: ModelOpt = "builtin",
    data: DataOpt = "synthetic:all",
    n: Annotated[int | None, typer.Option("--n", help="Number of samples (synthetic default: 100).")] = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per generate call.")] = 16,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write predictions here (JSONL); a rerun resumes it.")
    ] = None,
    as_json: JsonOpt = False,
    skip_invalid: SkipOpt = False,
    trust_remote_code: TrustOpt = False,
    max_pixels: MaxPixelsOpt = None,
    max_frames: MaxFramesOpt = None,
    device_map: DeviceMapOpt = None,
    dtype: DtypeOpt = "float32",
    num_processes: ProcsOpt = 1,
) -> None:
    """Task accuracy (exact match of the generated answer) of a model on a dataset."""
    shard = _scale_out(num_processes)
    samples = _load_samples(data, n, seed, skip_invalid)
    adapter = _load_model(model, trust_remote_code, max_pixels, max_frames, device_map, dtype)
    result = _run_eval(adapter, samples, out_file, batch_size, shard)
    if not shard.main:
        return
    summary = {
        "model": model,
        "data": data,
        "seed": seed,
        "n": result.n,
        "accuracy": result.accuracy,
        "by_domain": result.by_domain(),
    }
    if as_json:
        emit_json(summary)
    else:
        out.print(_accuracy_table(f"{model} on {data}", result.by_domain(), summary))


@app.command()
def score(
    model: ModelOpt = "builtin",
    data: DataOpt = "synthetic:all",
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (results/, manifest.json, heads.json).")] = Path(
        "runs/score"
    ),
    query: Annotated[
        str, typer.Option("--query", help="Query rows that rank heads: all, question, prompt-end, answer or generated.")
    ] = "all",
    metric: Annotated[str, typer.Option("--metric", help="ram or ram_minus_distractor.")] = "ram",
    limit: Annotated[int | None, typer.Option("--limit", help="Score at most this many samples.")] = None,
    fraction: Annotated[float, typer.Option("--fraction", help="Share of heads selected as CoRe heads.")] = 0.05,
    count: Annotated[int | None, typer.Option("--count", help="Select this many heads instead.")] = None,
    correct_only: Annotated[
        bool, typer.Option("--correct-only", help="Also rank on correctly answered samples (heads-correct.json).")
    ] = False,
    maps: Annotated[
        int, typer.Option("--maps", help="Keep every head's attention maps for the first N samples (RUN/maps/).")
    ] = 0,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 4,
    as_json: JsonOpt = False,
    skip_invalid: SkipOpt = False,
    trust_remote_code: TrustOpt = False,
    max_pixels: MaxPixelsOpt = None,
    max_frames: MaxFramesOpt = None,
    device_map: DeviceMapOpt = None,
    dtype: DtypeOpt = "float32",
    num_processes: ProcsOpt = 1,
) -> None:
    """Score every decoder head by Retrieval Attention Mass; write RUN/results and RUN/heads.json."""
    from corehead.experiments.score import ScoreOptions, score_and_select

    shard = _scale_out(num_processes)
    samples = _load_samples(
        data, limit if limit is not None or not data.startswith("synthetic:") else 100, seed, skip_invalid
    )
    adapter = _load_model(model, trust_remote_code, max_pixels, max_frames, device_map, dtype)
    group = query.replace("-", "_")
    options = ScoreOptions(batch_size=batch_size, maps=maps)
    with progress("scoring", _share(shard, samples, batch_size)) as advance:
        headset, run = score_and_select(
            adapter, samples, out_dir, data, group, metric, fraction, count, options, advance, shard=shard
        )
    if run.fallbacks:
        log(f"{run.fallbacks} region(s) too small for the overlap threshold fell back to their best cells")
    if correct_only:  # reported both ways: all samples first, then the correctly answered ones
        _print_headset(headset)
        log("ranked on the samples the model answers correctly (heads-correct.json):")
        headset, _ = score_and_select(
            adapter, samples, out_dir, data, group, metric, fraction, count, options, correct_only=True, shard=shard
        )
    if not shard.main:
        return
    from corehead.plots import head_map

    title = f"{headset.metric} per head ({headset.query} rows, {headset.n_samples} samples)"
    head_map(np.asarray(headset.scores["mean"]), headset.selected, title, out_dir / "heads.png")
    if as_json:
        emit_json(
            {
                "heads": str(out_dir / "heads.json"),
                "n": headset.n_samples,
                "selected": headset.selected,
                "layer_profile": headset.layer_profile().tolist(),
            }
        )
        return
    _print_headset(headset)
    log(f"results: {out_dir}/ (results/*.parquet, manifest.json, heads.json, heads.png)")


def _print_headset(headset: Any, top: int = 10) -> None:
    table = Table(title=f"top heads by {headset.metric} ({headset.query} rows; {headset.n_samples} samples)")
    for col in ("rank", "layer", "head", "kv head", "mean", "95% CI", "selected"):
        table.add_column(col, justify="right")
    mean, low, high = (headset.scores[k] for k in ("mean", "low", "high"))
    chosen = set(headset.selected)
    for rank, (layer, head) in enumerate(headset.ranking[:top], start=1):
        table.add_row(
            str(rank),
            str(layer),
            str(head),
            str(head // headset.groups),
            f"{mean[layer][head]:.3f}",
            f"{low[layer][head]:.3f}-{high[layer][head]:.3f}",
            "yes" if (layer, head) in chosen else "",
        )
    out.print(table)
    profile = Table(title="layer profile (mean score over heads)")
    profile.add_column("layer", justify="right")
    profile.add_column("mean", justify="right")
    profile.add_column("selected heads", justify="right")
    for layer, value in enumerate(headset.layer_profile()):
        profile.add_row(str(layer), f"{value:.4f}", str(sum(1 for l_, _ in headset.selected if l_ == layer)))
    out.print(profile)


@heads_app.command("show")
def heads_show(
    path: Annotated[Path, typer.Argument(help="A heads.json (or the run folder holding it).")],
    top: Annotated[int, typer.Option("--top", help="Rows of the ranking to print.")] = 10,
) -> None:
    """Print a head set's top heads and layer profile."""
    _print_headset(_headset(path), top)


@heads_app.command("compare")
def heads_compare(
    first: Annotated[Path, typer.Argument(help="heads.json of one run.")],
    second: Annotated[Path, typer.Argument(help="heads.json of another run.")],
) -> None:
    """Overlap of two head sets: Jaccard of the selections, Spearman correlation of the rankings."""
    from corehead.heads import overlap

    a, b = (_headset(p) for p in (first, second))
    emit_json(overlap(a, b))


@heads_app.command("export")
def heads_export(
    path: Annotated[Path, typer.Argument(help="heads.json to export.")],
    to: Annotated[str, typer.Option("--to", help="retrieval-head (JSON) or duo (full_attention_heads.tsv).")],
    out_file: Annotated[Path, typer.Option("--out", help="File to write.")],
) -> None:
    """Write a head set in a peer's format."""
    from corehead.heads import to_duo_tsv, to_retrieval_head

    headset = _headset(path)
    if to == "retrieval-head":
        out_file.write_text(json.dumps(to_retrieval_head(headset)))
    elif to == "duo":
        out_file.write_text(to_duo_tsv(headset))
    else:
        raise ValueError(f"--to must be retrieval-head or duo, got {to!r}")
    log(f"wrote {out_file}")


@app.command()
def ablate(
    heads: HeadsOpt,
    model: ModelOpt = "builtin",
    data: DataOpt = "synthetic:all",
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (ablation.jsonl, ablation.json).")] = Path(
        "runs/ablate"
    ),
    k: Annotated[str, typer.Option("--k", help="Heads cut per condition: shares of all heads and/or counts.")] = (
        "1%,2%,5%,10%,20%"
    ),
    controls: Annotated[str, typer.Option("--controls", help="Same-size controls: bottom, random or both.")] = (
        "bottom,random"
    ),
    seeds: Annotated[int, typer.Option("--seeds", help="Random control sets per k.")] = 5,
    mode: Annotated[
        str, typer.Option("--mode", help="zero, mean, query-zero (legacy), mask-visual, mask-region or patch.")
    ] = "zero",
    rankings: Annotated[
        str | None,
        typer.Option(
            "--rankings",
            help="Also cut the top-k of these rankings from the scoring run, e.g. "
            "question,answer,ram_minus_distractor:all (metric:query; a bare query means RAM).",
        ),
    ] = None,
    user_heads: Annotated[
        str | None, typer.Option("--user-heads", help="Also cut this head set, e.g. 2-5,3-0 (layer-head).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many samples.")] = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    as_json: JsonOpt = False,
    skip_invalid: SkipOpt = False,
    trust_remote_code: TrustOpt = False,
    max_pixels: MaxPixelsOpt = None,
    max_frames: MaxFramesOpt = None,
    device_map: DeviceMapOpt = None,
    dtype: DtypeOpt = "float32",
    num_processes: ProcsOpt = 1,
) -> None:
    """Cut the top-k heads and same-size bottom and random controls; paired effects with 95% CIs."""
    from corehead.experiments.ablate import ablate as run_ablate
    from corehead.experiments.ablate import parse_k, plan_conditions, summarize
    from corehead.experiments.score import run_rankings

    shard = _scale_out(num_processes)
    headset = _headset(heads)
    ks = parse_k(k, len(headset.ranking))
    chosen = {f"{headset.metric}:{headset.query}": headset.ranking}
    if rankings:
        extra = run_rankings(heads if heads.is_dir() else heads.parent, [r.strip() for r in rankings.split(",")])
        chosen.update({name: r for name, r in extra.items() if name not in chosen})
    user = _parse_heads(user_heads) if user_heads else None
    kinds = tuple(c.strip() for c in controls.split(",") if c.strip())
    samples = _load_samples(
        data, limit if limit is not None or not data.startswith("synthetic:") else 100, seed, skip_invalid
    )
    adapter = _load_model(model, trust_remote_code, max_pixels, max_frames, device_map, dtype)
    total = _share(shard, samples, batch_size) * len(plan_conditions(chosen, ks, seeds, kinds, user))
    with progress("answering under ablations", total) as advance:
        rows = run_ablate(
            adapter,
            samples,
            chosen,
            out_dir,
            ks,
            seeds,
            mode,
            kinds,
            user,
            batch_size,
            on_progress=advance,
            dataset=data,
            shard=shard,
        )
    if not shard.main:
        return
    table = summarize(rows)
    (out_dir / "ablation.json").write_text(
        json.dumps({"heads": str(heads), "mode": mode, "conditions": table}, indent=2)
    )
    from corehead.plots import ablation_sweep

    ablation_sweep(table, f"{mode} ablation ({len(samples)} samples)", out_dir / "ablation.png")
    if as_json:
        emit_json({"mode": mode, "conditions": table})
        return
    _print_ablation(table, f"{mode} ablation ({len(samples)} samples)")
    log(f"results: {out_dir}/ (ablation.jsonl, ablation.json, ablation.png)")


def _headset(path: Path) -> Any:
    """The HeadSet in heads.json, given the file or its scoring run folder."""
    from corehead.heads import HeadSet

    return HeadSet.load(path / "heads.json" if path.is_dir() else path)


def _parse_heads(spec: str) -> list[tuple[int, int]]:
    """'2-5,3-0' -> [(2, 5), (3, 0)]."""
    try:
        return [(int(a), int(b)) for a, b in (p.strip().split("-") for p in spec.split(",") if p.strip())]
    except ValueError:
        raise ValueError(f"heads are written layer-head, comma separated (e.g. 2-5,3-0); got {spec!r}") from None


def _print_ablation(table: list[dict[str, Any]], title: str) -> None:
    view = Table(title=title)
    columns = ("ranking", "condition", "k", "accuracy", "Δ accuracy [95% CI]", "p", "top − random [95% CI]")
    patched = any("to_source" in row for row in table)
    for col in (*columns, "Δ answer log-prob [95% CI]", *(["to source's answer"] if patched else [])):
        view.add_column(col, justify="right")
    for row in table:
        lo, hi = row["delta_accuracy_ci"]
        lo_lp, hi_lp = row["delta_logprob_ci"]
        vs = ""
        if "vs_random" in row:
            vlo, vhi = row["vs_random_ci"]
            vs = f"{row['vs_random']:+.3f} [{vlo:+.3f}, {vhi:+.3f}]"
        view.add_row(
            row["ranking"],
            row["condition"],
            str(row["k"]),
            f"{row['accuracy']:.3f}",
            f"{row['delta_accuracy']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
            f"{row['p_value']:.3g}",
            vs,
            f"{row['delta_logprob']:+.2f} [{lo_lp:+.2f}, {hi_lp:+.2f}]",
            *([f"{row.get('to_source', float('nan')):.3f}"] if patched else []),
        )
    out.print(view)


@app.command()
def accelerate(
    heads: HeadsOpt,
    model: ModelOpt = "builtin",
    data: DataOpt = "synthetic:all",
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder (accelerate.jsonl, accelerate.json).")] = Path(
        "runs/accelerate"
    ),
    budget: Annotated[
        float, typer.Option("--budget", help="Share of visual tokens kept by the KV heads of non-CoRe heads.")
    ] = 0.1,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma list: full, core, uniform, fastv, random, bottom, duo, sparsemm.")
    ] = "full,core,uniform,fastv,random,bottom,duo,sparsemm",
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many samples.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 8,
    prefill: Annotated[
        bool, typer.Option("--prefill", help="Reduced heads see only their kept tokens in the prefill too.")
    ] = False,
    query_agnostic: Annotated[
        bool, typer.Option("--query-agnostic", help="Compress the visual context before the question is seen.")
    ] = False,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
    skip_invalid: SkipOpt = False,
    trust_remote_code: TrustOpt = False,
    max_pixels: MaxPixelsOpt = None,
    max_frames: MaxFramesOpt = None,
    device_map: DeviceMapOpt = None,
    dtype: DtypeOpt = "float32",
    num_processes: ProcsOpt = 1,
) -> None:
    """Full visual KV only for CoRe heads vs full attention and other methods at the same KV budget."""
    from corehead.experiments.accelerate import accelerate as run_accelerate
    from corehead.experiments.accelerate import summarize as summarize_runs

    shard = _scale_out(num_processes)
    headset = _headset(heads)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    samples = _load_samples(
        data, limit if limit is not None or not data.startswith("synthetic:") else 100, seed, skip_invalid
    )
    adapter = _load_model(model, trust_remote_code, max_pixels, max_frames, device_map, dtype)
    with progress("answering with each method", _share(shard, samples, 1)) as advance:
        rows = run_accelerate(
            adapter,
            samples,
            headset,
            out_dir,
            budget,
            chosen,
            max_new_tokens,
            on_progress=advance,
            prefill=prefill,
            query_agnostic=query_agnostic,
            dataset=data,
            shard=shard,
        )
    if not shard.main:
        return
    table = summarize_runs(rows)
    result = {"budget": budget, "prefill": prefill, "query_agnostic": query_agnostic, "methods": table}
    (out_dir / "accelerate.json").write_text(json.dumps(result, indent=2))
    from corehead.plots import kv_tradeoff

    kv_tradeoff(table, f"accuracy vs KV kept at budget {budget:g}", out_dir / "accelerate.png")
    if as_json:
        emit_json(result)
        return
    when = ("prefill and decode" if prefill else "decode") + (", question after compression" if query_agnostic else "")
    _print_acceleration(table, f"KV compression at budget {budget:g} in {when} ({len(samples)} samples)")
    log(f"results: {out_dir}/ (accelerate.jsonl, accelerate.json, accelerate.png)")


def _print_acceleration(table: list[dict[str, Any]], title: str) -> None:
    view = Table(title=title)
    columns = ("method", "visual KV kept", "accuracy [95% CI]", "prefill", "decode / token", "peak memory", "KV bytes")
    for col in columns:
        view.add_column(col, justify="right")

    def with_ratio(row: dict[str, Any], key: str, unit: str, scale: float) -> str:
        if row[key] is None:
            return "n/a (CPU)" if key == "peak_memory_bytes" else "n/a"
        ratio = row[f"{key}_vs_full"]
        return f"{row[key] * scale:.3g} {unit}" + (f" ({ratio:.2f}x)" if ratio is not None else "")

    for row in table:
        lo, hi = row["accuracy_ci"]
        view.add_row(
            row["method"],
            f"{row['visual_kv_share']:.0%}",
            f"{row['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
            with_ratio(row, "prefill_s", "ms", 1e3),
            with_ratio(row, "decode_s_per_token", "ms", 1e3),
            with_ratio(row, "peak_memory_bytes", "MiB", 2**-20),
            with_ratio(row, "kv_bytes", "KiB", 2**-10),
        )
    out.print(view)


@app.command()
def demo(
    n: Annotated[int, typer.Option("--n", help="Held-out samples per synthetic domain.")] = 100,
    seed: SeedOpt = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder for the demo's results.")] = Path("runs/demo"),
    n_score: Annotated[int, typer.Option("--n-score", help="Samples per domain scored for CoRe heads.")] = 40,
    n_ablate: Annotated[int, typer.Option("--n-ablate", help="Samples per domain in the ablation sweep.")] = 40,
    n_accelerate: Annotated[
        int, typer.Option("--n-accelerate", help="Samples per domain in the KV compression comparison.")
    ] = 20,
    as_json: JsonOpt = False,
) -> None:
    """End to end on the built-in model: accuracy per domain, its CoRe heads, whether cutting them hurts,
    and what keeping full visual KV only for them saves."""
    import time

    from corehead.data import synthetic

    began = time.time()
    samples = [s for domain in synthetic.DOMAINS for s in synthetic.generate(domain, n, seed=seed)]
    log(f"generated {len(samples)} held-out synthetic samples ({', '.join(synthetic.DOMAINS)}; seed {seed})")
    adapter = _load_model("builtin")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = _run_eval(adapter, samples, out_dir / f"predictions-seed{seed}.jsonl", batch_size=32)
    summary = {
        "model": "builtin",
        "data": "synthetic:all",
        "seed": seed,
        "n": result.n,
        "accuracy": result.accuracy,
        "by_domain": result.by_domain(),
    }
    if not as_json:
        out.print(_accuracy_table("built-in model, held-out synthetic samples", result.by_domain(), summary))
    from corehead.experiments.score import ScoreOptions, score_and_select

    heads = {}
    for domain in synthetic.DOMAINS:
        chosen = [s for s in samples if s.domain == domain][:n_score]
        with progress(f"scoring heads on {domain}", len(chosen)) as advance:
            headset, _ = score_and_select(
                adapter,
                chosen,
                out_dir / f"score-{domain}",
                f"synthetic:{domain}",
                options=ScoreOptions(maps=4),  # maps of a few samples, for the report's overlays
                on_progress=advance,
            )
        heads[domain] = headset
    summary["core_heads"] = {d: h.selected for d, h in heads.items()}
    from corehead.experiments.ablate import ablate, parse_k, plan_conditions, summarize
    from corehead.plots import ablation_sweep, head_map, kv_tradeoff

    for domain, headset in heads.items():
        title = f"RAM per head on {domain}"
        head_map(np.asarray(headset.scores["mean"]), headset.selected, title, out_dir / f"score-{domain}" / "heads.png")

    sweep = {}
    for domain, headset in heads.items():
        chosen = [s for s in samples if s.domain == domain][:n_ablate]
        ks = parse_k("5%,10%", len(headset.ranking))
        plan = plan_conditions({"ram:all": headset.ranking}, ks, seeds=3)
        with progress(f"ablating heads on {domain}", len(chosen) * len(plan)) as advance:
            rows = ablate(
                adapter,
                chosen,
                headset,
                out_dir / f"ablate-{domain}",
                ks,
                seeds=3,
                batch_size=32,
                max_new_tokens=4,
                on_progress=advance,
            )
        sweep[domain] = summarize(rows)
        ablation_sweep(sweep[domain], f"zeroing heads on {domain}", out_dir / f"ablate-{domain}" / "ablation.png")
    summary["ablation"] = sweep
    from corehead.experiments.accelerate import accelerate as run_accelerate
    from corehead.experiments.accelerate import summarize as summarize_runs

    compared = {}
    for domain, headset in heads.items():
        chosen = [s for s in samples if s.domain == domain][:n_accelerate]
        with progress(f"KV compression on {domain}", len(chosen)) as advance:
            rows = run_accelerate(
                adapter,
                chosen,
                headset,
                out_dir / f"accelerate-{domain}",
                0.1,
                list(DEMO_METHODS),
                max_new_tokens=4,
                on_progress=advance,
                prefill=True,  # compressed in the prefill too: decode-only compression leaves these answers alone
            )
        compared[domain] = summarize_runs(rows)
        kv_tradeoff(
            compared[domain], f"KV compression on {domain}", out_dir / f"accelerate-{domain}" / "accelerate.png"
        )
    summary["acceleration"] = compared
    from corehead.report.html import write_report

    summary["report"] = str(write_report([out_dir], out_dir / "report.html"))
    summary["wall_s"] = round(time.time() - began, 1)  # this launch (a rerun resumes, so it is shorter)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"CoRe heads (top 5% by RAM over all text rows; {n_score} samples per domain)")
    for col in ("domain", "CoRe heads (layer.head)", "RAM of the top head", "layers of the CoRe heads"):
        table.add_column(col)
    for domain, headset in heads.items():
        top = headset.selected[0]
        layers = sorted({layer for layer, _ in headset.selected})
        table.add_row(
            domain,
            " ".join(f"{l_}.{h}" for l_, h in headset.selected),
            f"{headset.scores['mean'][top[0]][top[1]]:.3f}",
            ", ".join(map(str, layers)),
        )
    out.print(table)
    _print_sweep(sweep, n_ablate)
    table = Table(
        title=f"visual KV at budget 0.1 for non-CoRe KV heads, prefill and decode ({n_accelerate} samples per domain)"
    )
    for col in ("domain", *(f"{m}: accuracy, KV bytes" for m in DEMO_METHODS)):
        table.add_column(col, justify="right")
    for domain, rows in compared.items():
        by = {r["method"]: r for r in rows}
        table.add_row(domain, *(f"{by[m]['accuracy']:.2f}, {by[m]['kv_bytes_vs_full']:.2f}x" for m in DEMO_METHODS))
    out.print(table)
    log(f"results: {out_dir}/ (summary.json, predictions-seed{seed}.jsonl, score-*/, ablate-*/, accelerate-*/)")
    log(f"report: {summary['report']} (demo took {summary['wall_s']:.0f} s)")


@app.command()
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


DEMO_METHODS = ("full", "core", "uniform", "duo", "bottom")


def _print_sweep(sweep: dict[str, list[dict[str, Any]]], n: int) -> None:
    """Per domain and k: accuracy with the top-k, bottom-k and random-k heads zeroed (drops with 95% CIs)."""
    table = Table(title=f"zeroing heads ({n} samples per domain; Δ vs the full model, 95% CI)")
    for col in ("domain", "k", "full model", "top-k", "bottom-k", "random-k (mean of 3)", "top − random"):
        table.add_column(col, justify="right")

    def cell(row: dict[str, Any]) -> str:
        lo, hi = row["delta_accuracy_ci"]
        return f"{row['accuracy']:.2f} ({row['delta_accuracy']:+.2f} [{lo:+.2f}, {hi:+.2f}])"

    for domain, rows in sweep.items():
        full = next(r for r in rows if r["condition"] == "none")
        for k in sorted({r["k"] for r in rows if r["k"]}):
            at = {r["condition"]: r for r in rows if r["k"] == k}
            random = [r["accuracy"] for name, r in at.items() if name.startswith("random-")]
            lo, hi = at["top"].get("vs_random_ci", [float("nan")] * 2)
            table.add_row(
                domain,
                str(k),
                f"{full['accuracy']:.2f}",
                cell(at["top"]),
                cell(at["bottom"]),
                f"{sum(random) / len(random):.2f}",
                f"{at['top'].get('vs_random', float('nan')):+.2f} [{lo:+.2f}, {hi:+.2f}]",
            )
    out.print(table)


@data_app.command("show")
def data_show(
    spec: Annotated[str, typer.Argument(help="synthetic:DOMAIN, a samples.jsonl or its folder.")],
    limit: Annotated[int, typer.Option("--limit", help="How many samples to print.")] = 5,
    seed: SeedOpt = 0,
    skip_invalid: SkipOpt = False,
) -> None:
    """Print loaded samples in corehead's JSONL format, one JSON object per line on stdout."""
    from corehead.data.sample import sample_to_json

    path = Path(spec)
    base = (path if path.is_dir() else path.parent).resolve() if not spec.startswith("synthetic:") else None
    for sample in _load_samples(spec, limit, seed, skip_invalid):
        emit_json(sample_to_json(sample, base))


@data_app.command("synth")
def data_synth(
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


@app.command("train-builtin")
def train_builtin(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the trained model, log and checkpoints.")],
    steps: Annotated[int, typer.Option("--steps", help="Training steps (batches).")] = 4500,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    seed: SeedOpt = 0,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch.")] = 2,
    workers: Annotated[
        int, typer.Option("--workers", min=0, help="Processes building batches ahead (use spare cores beside a GPU).")
    ] = 0,
    init: Annotated[
        str | None, typer.Option("--init", help="Start from these weights ('builtin' or a folder), not random.")
    ] = None,
    layers: Annotated[int | None, typer.Option("--layers", help="Decoder layers (default: the built-in's).")] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Peak learning rate (default 1e-3; lower to continue with --init).")
    ] = None,
    domain_weights: Annotated[
        str | None, typer.Option("--domain-weights", help="How often scenes,pages,clips are drawn, e.g. 1,2,3.")
    ] = None,
    still_video: Annotated[
        float | None, typer.Option("--still-video", help="Share of scenes images shown as a still video.")
    ] = None,
    value_focus: Annotated[
        float | None,
        typer.Option("--value-focus", help="Extra weight of the probe's value loss on cells showing an object."),
    ] = None,
) -> None:
    """Train the built-in tiny VLM from scratch (hours on 2 cores, minutes on a GPU when there is one); resumes."""
    from corehead.models.builtin.train import TrainConfig, train

    recipe: dict[str, Any] = {"layers": layers}
    if domain_weights is not None:
        try:
            weights = tuple(float(w) for w in domain_weights.split(","))
        except ValueError:
            weights = ()
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise typer.BadParameter("expected three non-negative numbers, e.g. 1,2,3", param_hint="--domain-weights")
        recipe["domain_weights"] = weights
    if lr is not None:
        if not lr > 0:
            raise typer.BadParameter("a positive learning rate", param_hint="--lr")
        recipe["lr"] = lr
    if still_video is not None:
        if not 0 <= still_video <= 1:
            raise typer.BadParameter("a share between 0 and 1", param_hint="--still-video")
        recipe["still_video"] = still_video
    if value_focus is not None:
        if not value_focus >= 0:
            raise typer.BadParameter("a non-negative weight", param_hint="--value-focus")
        recipe["value_focus"] = value_focus
    cfg = TrainConfig(
        steps=steps, batch_size=batch_size, seed=seed, threads=threads, workers=workers, init=init, **recipe
    )
    with progress("training", cfg.steps) as advance:
        state = {"last": 0}

        def on_step(step: int, record: dict[str, Any]) -> None:
            if state["last"] == 0 and step > 1:
                advance(step - 1)
            advance()
            state["last"] = step
            if "heldout" in record:
                accs = ", ".join(f"{k} {v:.2f}" for k, v in record["heldout"].items())
                log(f"step {step}: loss {record['loss']:.3f}, held-out {accs}")

        summary = train(out_dir, cfg, on_step=on_step)
    emit_json({"out": str(out_dir), "steps": summary["steps"], "heldout": summary["heldout"]})


def main() -> None:
    """Console entry point: errors are one clear line (exit 1) unless --debug."""
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)

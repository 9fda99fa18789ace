"""`corehead ablate`: cut the top-k heads and same-size controls; paired effects with 95% CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from corehead.cli.console import emit_json, log, progress
from corehead.cli.heads import HeadsOpt, OverlapOpt, load_headset
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, ModelOptions, RunOptions, options, run_options
from corehead.cli.tables import print_ablation
from corehead.runfolder import RunFolder

RUN = run_options(Path("runs/ablate"), "Run folder (ablation.jsonl, ablation.json).", 8)
KOpt = Annotated[str, typer.Option("--k", help="Heads cut per condition: shares of all heads and/or counts.")]
CONTROLS = (
    "Same-size controls per ranking and k: bottom, random (outside its top k), random-layer-matched (as many "
    "heads per layer as its top k)."
)
REFERENCE_SEED = (
    "Mode mean: seed of the reference set (synthetic data: its own seed, default --seed + 1; a dataset: the "
    "draw among the samples not evaluated, default 0)."
)
ControlsOpt = Annotated[str, typer.Option("--controls", help=CONTROLS)]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="Draws of each random control per ranking and k.")]
ModeOpt = Annotated[str, typer.Option("--mode", help="How heads are cut: {modes}.")]
RankingsOpt = Annotated[
    str | None,
    typer.Option(
        "--rankings",
        help="Also cut the top-k of these rankings from the scoring run, e.g. "
        "question,answer,ram_minus_distractor:all (metric:query; a bare query means RAM).",
    ),
]
UserHeadsOpt = Annotated[
    str | None, typer.Option("--user-heads", help="Also cut this head set, e.g. 2-5,3-0 (layer-head).")
]
ReferenceOpt = Annotated[
    int, typer.Option("--reference", help="Mode mean: samples in the reference set the head means come from.")
]
ReferenceSeedOpt = Annotated[int | None, typer.Option("--reference-seed", help=REFERENCE_SEED)]


@options(model=MODEL, data=DATA, run=RUN)
def ablate(
    heads: HeadsOpt,
    model: ModelOptions,
    data: DataOptions,
    run: RunOptions,
    k: KOpt = "1%,2%,5%,10%,20%",
    controls: ControlsOpt = "bottom,random,random-layer-matched",
    seeds: SeedsOpt = 5,
    mode: ModeOpt = "zero",
    rankings: RankingsOpt = None,
    user_heads: UserHeadsOpt = None,
    allow_overlap: OverlapOpt = False,
    reference: ReferenceOpt = 32,
    reference_seed: ReferenceSeedOpt = None,
) -> None:
    """Cut the top-k heads and same-size bottom and random controls on held-out samples; paired effects
    with 95% CIs that include the draw of the random controls."""
    from corehead.experiments.ablate import MODES, choose_samples, parse_k, plan_conditions
    from corehead.experiments.ablate import ablate as run_ablate
    from corehead.experiments.study import share

    MODES.get(mode)
    with processes(run.num_processes) as shard:
        headset = load_headset(heads)
        ks = parse_k(k, len(headset.ranking))
        chosen = compared_rankings(heads, headset, rankings)  # the rankings of one scoring run: its samples
        user = parse_heads(user_heads) if user_heads else None
        kinds = tuple(c.strip() for c in controls.split(",") if c.strip())
        plan = plan_conditions(chosen, ks, seeds, kinds, user)
        samples = data.load()
        kept = choose_samples(samples, headset, allow_overlap, mode, data.skip_invalid)
        _tell(kept, mode)
        refs = reference_set(data, kept.samples, reference, reference_seed) if MODES.get(mode).reference else None
        adapter = model.load()
        total = share(kept.samples, run.batch_size, shard) * len(plan)
        with progress("answering under ablations", total) as advance:
            cut = (adapter, samples, chosen, run.folder, ks, seeds, mode, kinds, user, run.batch_size)
            held = {"headset": headset, "allow_overlap": allow_overlap, "skip_invalid": data.skip_invalid}
            run_ablate(
                *cut, on_progress=advance, dataset=data.data, shard=shard, heads=str(heads), reference=refs, **held
            )
        if not shard.main:
            return
    summary = RunFolder(run.folder).read_summary("ablate")
    if run.as_json:
        emit_json({"mode": mode, **{key: v for key, v in summary.items() if key not in ("heads", "mode")}})
        return
    print_ablation(summary["conditions"], f"{mode} ablation ({len(kept.samples)} samples)")
    log(f"results: {run.folder}/ (ablation.jsonl, ablation.json, ablation.png)")


def _tell(chosen: Any, mode: str) -> None:
    """The held-out line (a warning in yellow), and the samples the mode skips."""
    from rich.markup import escape

    line = chosen.held.message()
    log(f"[yellow]{escape(line)}[/yellow]" if line.startswith("warning") else escape(line))
    if chosen.skipped:
        ids = escape(", ".join(chosen.skipped[:20]))
        log(f"[yellow]skipped {len(chosen.skipped)} sample(s) mode {mode} cannot cut:[/yellow] {ids}")


def reference_set(data: DataOptions, evaluated: list[Any], n: int, seed: int | None) -> list[Any]:
    """Mode mean's reference set: `n` samples never evaluated (see modes/mean.py reference_samples)."""
    from corehead.experiments.modes.mean import reference_samples

    if seed is None:
        seed = data.seed + 1 if data.data.startswith("synthetic:") else 0
    refs = reference_samples(data.data, evaluated, n, seed, data.seed, data.skip_invalid)
    log(f"mean ablation: head means over {len(refs)} reference samples (seed {seed}), none of them evaluated")
    return refs


def compared_rankings(heads: Path, headset: Any, rankings: str | None) -> dict[str, list[tuple[int, int]]]:
    """The head set's own ranking, then the other rankings of its scoring run named by --rankings."""
    from corehead.experiments.score import run_rankings

    chosen = {f"{headset.metric}:{headset.query}": headset.ranking}
    if rankings:
        extra = run_rankings(heads if heads.is_dir() else heads.parent, [r.strip() for r in rankings.split(",")])
        chosen.update({name: r for name, r in extra.items() if name not in chosen})
    return chosen


def parse_heads(spec: str) -> list[tuple[int, int]]:
    """'2-5,3-0' -> [(2, 5), (3, 0)]."""
    try:
        return [(int(a), int(b)) for a, b in (p.strip().split("-") for p in spec.split(",") if p.strip())]
    except ValueError:
        raise ValueError(f"heads are written layer-head, comma separated (e.g. 2-5,3-0); got {spec!r}") from None

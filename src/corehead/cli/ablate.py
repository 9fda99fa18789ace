"""`corehead ablate`: cut the top-k heads and same-size controls; paired effects with 95% CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from corehead.cli.console import emit_json, log, progress
from corehead.cli.heads import HeadsOpt, load_headset
from corehead.cli.launch import processes
from corehead.cli.options import DATA, MODEL, DataOptions, ModelOptions, RunOptions, options, run_options
from corehead.cli.tables import print_ablation
from corehead.runfolder import RunFolder

RUN = run_options(Path("runs/ablate"), "Run folder (ablation.jsonl, ablation.json).", 8)
KOpt = Annotated[str, typer.Option("--k", help="Heads cut per condition: shares of all heads and/or counts.")]
ControlsOpt = Annotated[str, typer.Option("--controls", help="Same-size controls: bottom, random or both.")]
SeedsOpt = Annotated[int, typer.Option("--seeds", help="Random control sets per k.")]
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


@options(model=MODEL, data=DATA, run=RUN)
def ablate(
    heads: HeadsOpt,
    model: ModelOptions,
    data: DataOptions,
    run: RunOptions,
    k: KOpt = "1%,2%,5%,10%,20%",
    controls: ControlsOpt = "bottom,random",
    seeds: SeedsOpt = 5,
    mode: ModeOpt = "zero",
    rankings: RankingsOpt = None,
    user_heads: UserHeadsOpt = None,
) -> None:
    """Cut the top-k heads and same-size bottom and random controls; paired effects with 95% CIs."""
    from corehead.experiments.ablate import MODES, parse_k, plan_conditions
    from corehead.experiments.ablate import ablate as run_ablate
    from corehead.experiments.study import share

    MODES.get(mode)
    with processes(run.num_processes) as shard:
        headset = load_headset(heads)
        ks = parse_k(k, len(headset.ranking))
        chosen = compared_rankings(heads, headset, rankings)
        user = parse_heads(user_heads) if user_heads else None
        kinds = tuple(c.strip() for c in controls.split(",") if c.strip())
        samples = data.load()
        adapter = model.load()
        total = share(samples, run.batch_size, shard) * len(plan_conditions(chosen, ks, seeds, kinds, user))
        with progress("answering under ablations", total) as advance:
            cut = (adapter, samples, chosen, run.folder, ks, seeds, mode, kinds, user, run.batch_size)
            run_ablate(*cut, on_progress=advance, dataset=data.data, shard=shard, heads=str(heads))
        if not shard.main:
            return
    conditions = RunFolder(run.folder).read_summary("ablate")["conditions"]
    if run.as_json:
        emit_json({"mode": mode, "conditions": conditions})
        return
    print_ablation(conditions, f"{mode} ablation ({len(samples)} samples)")
    log(f"results: {run.folder}/ (ablation.jsonl, ablation.json, ablation.png)")


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

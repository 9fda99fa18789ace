"""`corehead train-builtin`: train the built-in tiny VLM; held-out accuracy is measured with `evaluate`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from corehead.cli.console import emit_json, log, progress
from corehead.cli.options import SeedOpt

OutOpt = Annotated[Path, typer.Option("--out", help="Folder for the trained model, log and checkpoints.")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Training steps (batches).")]
BatchOpt = Annotated[int, typer.Option("--batch-size")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="CPU threads for torch.")]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="Processes building batches ahead (use spare cores beside a GPU).")
]
InitOpt = Annotated[
    str | None, typer.Option("--init", help="Start from these weights ('builtin' or a folder), not random.")
]
LayersOpt = Annotated[int | None, typer.Option("--layers", help="Decoder layers (default: the built-in's).")]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default 1e-3; lower to continue with --init).")
]
WeightsOpt = Annotated[
    str | None, typer.Option("--domain-weights", help="How often scenes,pages,clips are drawn, e.g. 1,2,3.")
]
StillOpt = Annotated[float | None, typer.Option("--still-video", help="Share of scenes images shown as a still video.")]
FocusOpt = Annotated[
    float | None,
    typer.Option("--value-focus", help="Extra weight of the probe's value loss on cells showing an object."),
]


def train_builtin(
    out_dir: OutOpt,
    steps: StepsOpt = 4500,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 2,
    workers: WorkersOpt = 0,
    init: InitOpt = None,
    layers: LayersOpt = None,
    lr: LrOpt = None,
    domain_weights: WeightsOpt = None,
    still_video: StillOpt = None,
    value_focus: FocusOpt = None,
) -> None:
    """Train the built-in tiny VLM from scratch (hours on 2 cores, minutes on a GPU when there is one); resumes."""
    from corehead.models.builtin.train import TrainConfig, train

    recipe = _recipe(layers, lr, domain_weights, still_video, value_focus)
    cfg = TrainConfig(
        steps=steps, batch_size=batch_size, seed=seed, threads=threads, workers=workers, init=init, **recipe
    )
    with progress("training", cfg.steps) as advance:
        summary = train(out_dir, cfg, on_step=_reporter(advance), evaluate=accuracy_by_domain)
    emit_json({"out": str(out_dir), "steps": summary["steps"], "heldout": summary["heldout"]})


def _recipe(
    layers: int | None,
    lr: float | None,
    domain_weights: str | None,
    still_video: float | None,
    value_focus: float | None,
) -> dict[str, Any]:
    """The recipe options given, checked (a bad one names its option); the others keep TrainConfig's defaults."""
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
    return recipe


def _reporter(advance: Callable[..., None]) -> Callable[[int, dict[str, Any]], None]:
    """The trainer's per-step callback: moves the bar (past the steps a resumed run skips) and logs evaluations."""
    last = 0

    def on_step(step: int, record: dict[str, Any]) -> None:
        nonlocal last
        if last == 0 and step > 1:
            advance(step - 1)
        advance()
        last = step
        if "heldout" in record:
            accs = ", ".join(f"{k} {v:.2f}" for k, v in record["heldout"].items())
            log(f"step {step}: loss {record['loss']:.3f}, held-out {accs}")

    return on_step


def accuracy_by_domain(adapter: Any, samples: list[Any]) -> dict[str, float]:
    """Exact-match accuracy per domain of the answers generated to held-out samples (the trainer's evaluation)."""
    from corehead.experiments.evaluate import evaluate

    result = evaluate(adapter, samples, batch_size=32, max_new_tokens=4)
    return {domain: row["accuracy"] for domain, row in result.by_domain().items()}

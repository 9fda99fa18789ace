"""The training recipe of the built-in model: its options and the schedules that depend on the step."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Options of one training run; saved beside the checkpoint so a resume uses the same ones."""

    steps: int = 4500
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 200
    aux_weight: float = 1.0
    value_focus: float = 0.0  # extra weight of the probe's value loss on cells that show an object
    max_turns: int = 6
    compact_start: float = 0.8  # share of one-hop sequences early in training
    compact_end: float = 0.25
    curriculum_steps: tuple[int, int] = (2000, 3500)
    domain_weights: tuple[float, ...] = (1.0, 2.0, 3.0)  # how often each of DOMAINS is drawn
    still_video: float = 0.25  # share of scenes inputs shown as a still video (see `batches.still_video`)
    init: str | None = None  # start from these weights ('builtin' or a folder) instead of random ones
    eval_every: int = 250
    eval_n: int = 50  # held-out samples per domain at each evaluation
    target: float = 0.97  # stop once every domain reaches this at an evaluation
    checkpoint_every: int = 100
    seed: int = 0
    small: bool = False
    layers: int | None = None  # decoder layers (None: the built-in architecture's)
    threads: int = 2
    workers: int = 0  # processes building batches ahead of the model (worth it beside a GPU)


def compact_share(cfg: TrainConfig, step: int) -> float:
    """Share of one-hop sequences at `step`; a continuation from trained weights keeps the final mix."""
    if cfg.init is not None:
        return cfg.compact_end
    a, b = cfg.curriculum_steps
    if step < a:
        return cfg.compact_start
    if step >= b:
        return cfg.compact_end
    return cfg.compact_start + (cfg.compact_end - cfg.compact_start) * (step - a) / (b - a)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then a cosine decay to a tenth of `cfg.lr`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

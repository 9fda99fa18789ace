"""Causal head ranking: what removing each head alone does to the gold answer.

`exact`: each head is cut alone (in any non-paired ablation mode: zero, mean, mask-region, ...) on every
sample, a batch of samples at a time, through the same code as `ablate`, so a head's effect equals
`ablate --user-heads` of that head on the same samples. The effect is the paired drop in the gold answer's
teacher-forced log-probability (clean minus cut; positive: the model needs the head), with whether
teacher-forced correctness is lost. Cost: (heads + 1) forwards per batch.

`atp` (attribution patching): one forward and one backward per batch give every head's linear estimate:
zero, g . z summed over positions (z the head's o_proj-input slice, g the gradient of the log-probability
there); mean, g . (z - its mean); mask-region, the exact change of the head's output when its attention to
the region is knocked out and renormalised (attention/attribution.py), times g. For the thousands of heads
of a real model; where heads interact or saturate, the linear estimate and the exact effect part.

Rows (RUN/attribute.jsonl, one per sample): clean log-probability and per-head effects [layers][heads];
the summary (RUN/attribute.json) has per-head means with 95% bootstrap CIs, and RUN/heads.json the causal
ranking as a HeadSet (metric `causal:<mode>:logprob`), so every command taking --heads takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from corehead.attention.attribution import head_gradients, key_readout
from corehead.attention.recorder import decoder_attention
from corehead.data.sample import Sample
from corehead.experiments.ablate import choose_samples, gold_logprobs, gold_scores
from corehead.experiments.modes import AblationMode, Needs, ablation_mode
from corehead.experiments.runs import Shard
from corehead.experiments.study import JsonRows, Position, Study, Work, run_study
from corehead.heads import HeadScores, HeadSet, ids_digest, make_headset, scored_samples, select_heads
from corehead.metrics.stats import bootstrap_mean_ci
from corehead.models.base import ChatAdapter, Encoded
from corehead.plots import head_map
from corehead.runfolder import RunFolder

METHODS = ("exact", "atp")
ATP_MODES = ("zero", "mean", "mask-region")
TARGET = "logprob"


@dataclass(frozen=True)
class AttributeStudy(Study):
    """Every head's effect on every sample's gold answer, by `method` in ablation `mode`."""

    name: ClassVar[str] = "attribute"
    dataset: str
    method: str
    mode: str
    batch_size: int
    reference: list[Sample]  # mode mean's reference set (never evaluated)
    seed: int | None = None  # what the samples were drawn with (recorded in the head set)
    fraction: float = 0.05

    def settings(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {
            "model": adapter.name,
            "dataset": self.dataset,
            "method": self.method,
            "mode": self.mode,
            "reference": {"n": len(self.reference), "digest": ids_digest(s.id for s in self.reference)},
        }

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {"target": TARGET, "batch_size": self.batch_size, "seed": self.seed}

    def keys(self, sample: Sample) -> list[Hashable]:
        return [sample.id]

    def store(self, out: Path | None, shard: Shard, position: Position) -> JsonRows:
        path = RunFolder(out).rows(self.name) if out is not None else None
        return JsonRows(path, lambda row: row["id"], lambda row: position(row["id"]), shard)

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        mode = ablation_mode(self.mode)
        effects = _exact if self.method == "exact" else _atp
        with decoder_attention(adapter.model):
            means = mode.means(adapter, self.reference, self.batch_size)

            def work(batch: list[Sample], done: set[Hashable]) -> Iterator[tuple[Any, int]]:
                encoded = [adapter.encode(s, answer=True) for s in batch]
                needs = Needs(means, mode.forbidden(batch, encoded), None, mode.visual(encoded))
                clean, correct, grid, lost = effects(adapter, mode, encoded, needs)
                rows = [
                    {
                        "id": s.id,
                        "method": self.method,
                        "mode": self.mode,
                        "target": TARGET,
                        "clean": clean[b],
                        "correct": correct[b],
                        "effects": grid[b].tolist(),
                        **({"lost": lost[b].tolist()} if lost is not None else {}),
                    }
                    for b, s in enumerate(batch)
                ]
                yield rows, len(rows)

            yield work

    def summarise(
        self, adapter: ChatAdapter, samples: list[Sample], rows: Any, out: Path | None, shard: Shard
    ) -> dict[str, Any] | None:
        if not rows:  # every process sums up the merged rows (the main one publishes them)
            return None
        grid = np.asarray([r["effects"] for r in rows], dtype=float)
        mean, low, high = bootstrap_mean_ci(grid)
        scores = HeadScores(f"causal:{self.mode}:{TARGET}", "answer", mean, low, high, len(rows))
        selected, selection = select_heads(scores, fraction=self.fraction)
        headset = make_headset(
            scores,
            selected,
            selection,
            model=adapter.name,
            dataset=self.dataset,
            n_kv_heads=adapter.shape.n_kv_heads,
            revision=getattr(adapter.model.config, "_commit_hash", None),
            options={"method": self.method, "mode": self.mode, "target": TARGET},
            scored=scored_samples(self.dataset, self.seed, [r["id"] for r in rows]),
        )
        summary: dict[str, Any] = {
            "method": self.method,
            "mode": self.mode,
            "target": TARGET,
            "n": len(rows),
            "clean_correct": float(np.mean([r["correct"] for r in rows])),
            "effect": {"mean": mean.tolist(), "low": low.tolist(), "high": high.tolist()},
            "needed": [[int(a), int(b)] for a, b in zip(*np.nonzero(low > 0), strict=True)],
            "headset": headset,
        }
        if "lost" in rows[0]:
            summary["lost"] = np.mean([r["lost"] for r in rows], axis=0).tolist()
        return summary

    def publish(self, folder: RunFolder, summary: dict[str, Any], samples: list[Sample]) -> None:
        headset: HeadSet = summary["headset"]
        headset.save(folder.heads)
        title = f"{self.method} {self.mode} effect on the gold answer's log-prob ({summary['n']} samples)"
        head_map(np.asarray(headset.scores["mean"]), headset.selected, title, folder.figure(self.name))
        super().publish(folder, {k: v for k, v in summary.items() if k != "headset"}, samples)


Effects = Callable[
    [ChatAdapter, AblationMode, list[Encoded], Needs], tuple[list[float], list[bool], np.ndarray, np.ndarray | None]
]


def _exact(
    adapter: ChatAdapter, mode: AblationMode, encoded: list[Encoded], needs: Needs
) -> tuple[list[float], list[bool], np.ndarray, np.ndarray]:
    """Clean log-probs and correctness, then each head cut alone: effects and lost correctness [B, L, H]."""
    shape = adapter.shape
    clean, correct = gold_scores(adapter, encoded)
    effects = np.zeros((len(encoded), shape.n_layers, shape.n_heads))
    lost = np.zeros_like(effects, dtype=bool)
    for layer in range(shape.n_layers):
        for head in range(shape.n_heads):
            with mode.applied(adapter.model, ((layer, head),), needs):
                logp, right = gold_scores(adapter, encoded)
            effects[:, layer, head] = np.asarray(clean) - np.asarray(logp)
            lost[:, layer, head] = np.asarray(correct) & ~np.asarray(right)
    return clean, correct, effects, lost


def _atp(
    adapter: ChatAdapter, mode: AblationMode, encoded: list[Encoded], needs: Needs
) -> tuple[list[float], list[bool], np.ndarray, None]:
    """One forward and backward: every head's linear estimate of its effect [B, L, H]."""
    if mode.name not in ATP_MODES:
        raise ValueError(f"atp estimates modes {', '.join(ATP_MODES)}; got {mode.name!r} (use --method exact)")
    model = adapter.model
    if (mode.name == "mask-region" and needs.forbid is None) or (mode.name == "mean" and needs.visual is None):
        raise ValueError(f"mode {mode.name} needs the batch's region (or visual) positions")
    batch = {k: v.to(model.device) for k, v in adapter.collate(encoded).items()}
    with ExitStack() as stack:
        found = stack.enter_context(head_gradients(model))
        readout = stack.enter_context(key_readout(needs.forbid)) if needs.forbid is not None else None
        logp, top = gold_logprobs(model(**batch).logits, batch, encoded)
        logp.sum().backward()
    out = []
    for layer in sorted(found.outputs):
        z, g = found.outputs[layer], found.grad(layer)
        if readout is not None:
            change = readout.change(layer, z)
        elif needs.visual is not None:  # mean: each position's mean of its type
            text, visual = needs.means[layer].to(z)
            change = torch.where(needs.visual.to(z.device)[..., None, None], visual, text) - z
        else:
            change = -z
        out.append(-(g * change).sum(dim=(1, 3)))  # [B, H]: minus the estimated change of the log-prob
    effects = torch.stack(out, dim=1).float().cpu().numpy()
    return logp.tolist(), [bool(x) for x in top], effects, None


def attribute(
    adapter: ChatAdapter,
    samples: list[Sample],
    out: Path,
    method: str = "exact",
    mode: str = "zero",
    dataset: str = "custom",
    batch_size: int = 8,
    reference: list[Sample] | None = None,
    seed: int | None = None,
    fraction: float = 0.05,
    skip_invalid: bool = False,
    on_progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Every head's causal effect on `samples`' gold answers into the run folder `out` (resumable): rows,
    attribute.json, heads.json (the causal ranking); returns the summary (on every process)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    cut = ablation_mode(mode)
    if cut.paired:
        raise ValueError(f"mode {mode} patches from a source sample; attribute takes zero, mean, mask-region, ...")
    if method == "atp" and mode not in ATP_MODES:
        raise ValueError(f"atp estimates modes {', '.join(ATP_MODES)}; got {mode!r} (use --method exact)")
    chosen = choose_samples(samples, None, True, mode, skip_invalid).samples
    refs = reference or []
    if cut.reference and not refs:
        raise ValueError(f"mode {mode} takes head means from reference samples never evaluated: give reference")
    study = AttributeStudy(dataset, method, mode, batch_size, refs, seed, fraction)
    return run_study(study, adapter, chosen, out, shard, on_progress).summary or {}


def cost(n_samples: int, n_heads: int, batch_size: int, method: str) -> str:
    """What a run costs, said before it starts."""
    batches = -(-n_samples // batch_size)
    if method == "exact":
        return f"{batches * (n_heads + 1)} forwards ({n_heads} heads + clean, {batches} batches of {batch_size})"
    return f"{batches} forwards and backwards ({batches} batches of {batch_size})"


__all__ = ["METHODS", "AttributeStudy", "attribute", "cost"]

"""Causal test of a head set: ablate the top-k heads and same-size controls, measure the damage with CIs.

Conditions for each k: `none` (the model as is), `top` (the k best-ranked heads), `bottom` (the k
worst-ranked), and `random-s` for each seed s (k heads drawn uniformly from outside the top k). Every
sample is answered under every condition; rows (condition, k, sample, correct, gold answer log-prob)
are appended to RUN/ablation.jsonl as produced, and a rerun skips the rows already there. Effects are
paired differences against `none`, with 95% bootstrap intervals over samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corehead.attention.interventions import Head, HeadAblation, head_means
from corehead.data.sample import Sample
from corehead.heads import HeadSet
from corehead.metrics.stats import bootstrap_mean_ci
from corehead.metrics.tasks import exact_match
from corehead.models.base import ChatAdapter


@dataclass(frozen=True)
class Condition:
    """One ablation: a name (none, top, bottom, random-S), the number of heads k, and the heads."""

    name: str
    k: int
    heads: tuple[Head, ...]


def conditions(headset: HeadSet, ks: list[int], seeds: int = 3) -> list[Condition]:
    """Baseline, then top-k, bottom-k and `seeds` random-k drawn outside the top k, for each k."""
    out = [Condition("none", 0, ())]
    for k in ks:
        if not 0 < k < len(headset.ranking):
            raise ValueError(f"k must be between 1 and {len(headset.ranking) - 1}, got {k}")
        top = tuple(headset.ranking[:k])
        out.append(Condition("top", k, top))
        out.append(Condition("bottom", k, tuple(headset.ranking[-k:])))
        outside = headset.ranking[k:]
        for seed in range(seeds):
            pick = np.random.default_rng([seed, k]).choice(len(outside), size=k, replace=False)
            out.append(Condition(f"random-{seed}", k, tuple(outside[int(i)] for i in sorted(pick))))
    return out


@contextmanager
def _applied(condition: Condition, model: Any, mode: str, means: dict[int, torch.Tensor]) -> Iterator[None]:
    if not condition.heads:
        yield
        return
    with HeadAblation(condition.heads, mode=mode, means=means).apply(model):  # type: ignore[arg-type]
        yield


@torch.no_grad()
def _answer_logprob(adapter: ChatAdapter, samples: list[Sample]) -> list[float]:
    """Log-probability of each gold answer (its tokens and the end of turn), teacher-forced."""
    encoded = [adapter.encode(s, answer=True) for s in samples]
    batch = adapter.collate(encoded)
    logits = adapter.model(**{k: v.to(adapter.model.device) for k, v in batch.items()}).logits.float()
    logp = logits.log_softmax(-1)
    width = batch["input_ids"].shape[1]
    out = []
    for b, e in enumerate(encoded):
        targets = np.concatenate([e.answer, [e.answer[-1] + 1]]) + width - e.length  # answer tokens + end
        ids = batch["input_ids"][b, targets]
        out.append(float(logp[b, targets - 1].gather(-1, ids[:, None].to(logp.device)).sum()))
    return out


def ablate(
    adapter: ChatAdapter,
    samples: list[Sample],
    headset: HeadSet,
    out: Path,
    ks: list[int],
    seeds: int = 3,
    mode: str = "zero",
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Answer every sample under every condition; rows go to out/ablation.jsonl (resumable)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ablation.jsonl"
    done: set[tuple[str, int, str]] = set()
    rows: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line: redone
            key = (row["condition"], row["k"], row["id"])
            if key not in done:
                done.add(key)
                rows.append(row)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    means = (
        head_means(adapter.model, [adapter.collate([adapter.encode(s) for s in samples[:batch_size]])])
        if mode == "mean"
        else {}
    )
    with path.open("a") as handle:
        for condition in conditions(headset, ks, seeds):
            todo = [s for s in samples if (condition.name, condition.k, s.id) not in done]
            with _applied(condition, adapter.model, mode, means):
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start : start + batch_size]
                    answers = adapter.generate(chunk, max_new_tokens=16)
                    logps = _answer_logprob(adapter, chunk)
                    for sample, answer, logp in zip(chunk, answers, logps, strict=True):
                        row = {
                            "condition": condition.name,
                            "k": condition.k,
                            "id": sample.id,
                            "heads": [list(h) for h in condition.heads],
                            "prediction": answer,
                            "correct": exact_match(answer, sample.answer),
                            "answer_logprob": logp,
                        }
                        handle.write(json.dumps(row) + "\n")
                        rows.append(row)
                    handle.flush()
                    if on_progress is not None:
                        on_progress(len(chunk))
    wanted = {s.id for s in samples}
    return [r for r in rows if r["id"] in wanted]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (condition, k): accuracy and mean answer log-prob, and paired effects vs `none` with 95% CIs."""
    base = {r["id"]: r for r in rows if r["condition"] == "none"}
    ids = sorted(base)
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["condition"], r["k"]), {})[r["id"]] = r
    table = []

    def order(item: tuple[tuple[str, int], Any]) -> tuple[int, int, str]:
        name, k = item[0]
        return (k, {"none": 0, "top": 1, "bottom": 2}.get(name, 3), name)

    for (name, k), by_id in sorted(groups.items(), key=order):
        common = [i for i in ids if i in by_id]
        acc = np.array([float(by_id[i]["correct"]) for i in common])
        d_acc = acc - np.array([float(base[i]["correct"]) for i in common])
        d_logp = np.array([by_id[i]["answer_logprob"] - base[i]["answer_logprob"] for i in common])
        mean_acc, lo_acc, hi_acc = bootstrap_mean_ci(d_acc[:, None])
        mean_lp, lo_lp, hi_lp = bootstrap_mean_ci(d_logp[:, None])
        table.append(
            {
                "condition": name,
                "k": k,
                "n": len(common),
                "accuracy": float(acc.mean()),
                "delta_accuracy": float(mean_acc[0]),
                "delta_accuracy_ci": [float(lo_acc[0]), float(hi_acc[0])],
                "delta_logprob": float(mean_lp[0]),
                "delta_logprob_ci": [float(lo_lp[0]), float(hi_lp[0])],
            }
        )
    return table

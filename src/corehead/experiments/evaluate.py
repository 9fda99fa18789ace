"""Task accuracy of a model on grounded samples: generate, score, write each prediction as it is made.

Predictions go to a JSONL file one row per sample id; a rerun reads it back and only answers the samples
not yet there, so an interrupted run resumes and never duplicates a row (experiments/runs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corehead.data.sample import Sample
from corehead.experiments.runs import RowLog, Shard, current_shard, dataset_order
from corehead.metrics.tasks import score_answer
from corehead.models.base import ModelAdapter


@dataclass
class EvalResult:
    """Accuracy overall and per domain, from per-sample rows."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.rows) / max(1, self.n)

    def by_domain(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for domain in sorted({r["domain"] for r in self.rows}):
            hits = [r["correct"] for r in self.rows if r["domain"] == domain]
            out[domain] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
        return out


def evaluate(
    adapter: ModelAdapter,
    samples: list[Sample],
    out: Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 16,
    on_progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> EvalResult:
    """Answer every sample greedily and score it by exact match; rows are appended to `out` as produced.

    With `out`, a distributed launch shards the samples (experiments/runs.py) and `out` ends up holding
    every row in dataset order; without it, this process answers all samples.
    """
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"sample ids must be unique: {dup!r} appears more than once")
    shard = (shard or current_shard()) if out is not None else Shard()
    rows = RowLog(out, lambda r: r["id"], shard) if out is not None else None
    done = {r["id"]: r for r in rows.read()} if rows is not None else {}
    other = {r.get("model", adapter.name) for r in done.values()} - {adapter.name}
    if other:
        raise ValueError(f"{out} holds predictions of model {sorted(other)[0]!r}; use a new --out file")
    mine = shard.batches(samples, batch_size)
    if on_progress is not None:
        on_progress(sum(s.id in done for batch in mine for s in batch))
    for batch in mine:
        chunk = [s for s in batch if s.id not in done]
        if not chunk:
            continue
        answers = adapter.generate(chunk, max_new_tokens=max_new_tokens)
        new = [
            {
                "id": sample.id,
                "model": adapter.name,
                "domain": sample.domain,
                "question": sample.question,
                "answer": sample.answer,
                "prediction": answer,
                "correct": score_answer(sample, answer, adapter),
            }
            for sample, answer in zip(chunk, answers, strict=True)
        ]
        done.update((r["id"], r) for r in new)
        if rows is not None:
            rows.append(new)
        if on_progress is not None:
            on_progress(len(chunk))
    if rows is not None:
        key = dataset_order(samples)
        done = {r["id"]: r for r in rows.merge(order=lambda r: key(r["id"]))}
    return EvalResult([done[i] for i in ids])

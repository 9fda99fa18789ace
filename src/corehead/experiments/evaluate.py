"""Task accuracy of a model on grounded samples: generate, score, write each prediction as it is made.

Predictions go to a JSONL file one row per sample id; a rerun reads it back and only answers the samples
not yet there, so an interrupted run resumes and never duplicates a row (experiments/study.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from corehead.data.sample import Sample
from corehead.experiments.runs import Shard, current_shard
from corehead.experiments.study import JsonRows, Position, Study, Work, run_study
from corehead.metrics.tasks import score_answer
from corehead.models.base import ChatAdapter


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


@dataclass(frozen=True)
class EvalStudy(Study):
    """Greedy answers scored by the task metric, one row per sample; a predictions file has no manifest,
    but it may only hold one model's answers."""

    name: ClassVar[str] = "eval"
    model: str
    batch_size: int = 16
    max_new_tokens: int = 16

    def keys(self, sample: Sample) -> list[Hashable]:
        return [sample.id]

    def store(self, out: Path | None, shard: Shard, position: Position) -> JsonRows:
        def one_model(rows: list[dict[str, Any]]) -> None:
            other = {r.get("model", self.model) for r in rows} - {self.model}
            if other:
                raise ValueError(f"{out} holds predictions of model {sorted(other)[0]!r}; use a new --out file")

        return JsonRows(out, lambda r: r["id"], lambda r: position(r["id"]), shard, one_model)

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        def work(batch: list[Sample], done: set[Hashable]) -> Iterator[tuple[Any, int]]:
            answers = adapter.generate(batch, max_new_tokens=self.max_new_tokens)
            yield [self._row(adapter, s, a) for s, a in zip(batch, answers, strict=True)], len(batch)

        yield work

    def _row(self, adapter: ChatAdapter, sample: Sample, answer: str) -> dict[str, Any]:
        return {
            "id": sample.id,
            "model": adapter.name,
            "domain": sample.domain,
            "question": sample.question,
            "answer": sample.answer,
            "prediction": answer,
            "correct": score_answer(sample, answer, adapter.parse_boxes),
        }


def evaluate(
    adapter: ChatAdapter,
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
    study = EvalStudy(adapter.name, batch_size, max_new_tokens)
    return EvalResult(run_study(study, adapter, samples, out, shard, on_progress).rows)

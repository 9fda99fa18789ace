"""Task accuracy of a model on grounded samples: generate, score, write each prediction as it is made.

Predictions go to a JSONL file one row per sample id; a rerun reads it back and only answers the samples
not yet there, so an interrupted run resumes and never duplicates a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corehead.data.sample import Sample
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
) -> EvalResult:
    """Answer every sample greedily and score it by exact match; rows are appended to `out` as produced."""
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"sample ids must be unique: {dup!r} appears more than once")
    wanted = set(ids)
    done = _finished_rows(out, wanted) if out is not None else {}
    todo = [s for s in samples if s.id not in done]
    if on_progress is not None and done:
        on_progress(len(samples) - len(todo))
    handle = None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = out.open("a", encoding="utf-8")
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            answers = adapter.generate(chunk, max_new_tokens=max_new_tokens)
            for sample, answer in zip(chunk, answers, strict=True):
                row = {
                    "id": sample.id,
                    "domain": sample.domain,
                    "question": sample.question,
                    "answer": sample.answer,
                    "prediction": answer,
                    "correct": score_answer(sample, answer, adapter),
                }
                done[sample.id] = row
                if handle is not None:
                    handle.write(json.dumps(row) + "\n")
            if handle is not None:
                handle.flush()
            if on_progress is not None:
                on_progress(len(chunk))
    finally:
        if handle is not None:
            handle.close()
    return EvalResult([done[i] for i in ids])


def _finished_rows(out: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    """Rows already in `out` for the wanted ids; rewrites the file without a torn last line or duplicates."""
    if not out.exists():
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption: that sample is answered again
        rows.setdefault(row["id"], row)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    return {k: v for k, v in rows.items() if k in wanted}

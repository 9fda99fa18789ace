"""The default task: normalized exact match."""

from __future__ import annotations

from corehead.data.sample import Sample
from corehead.metrics.tasks.base import TASKS, BoxParser, Task, normalize_answer


def exact_match(prediction: str, gold: str) -> bool:
    """True when the normalized prediction equals the normalized gold answer."""
    return normalize_answer(prediction) == normalize_answer(gold)


@TASKS.register("exact", order=0)
class Exact(Task):
    """1 when the normalized answer equals the gold one."""

    def score(self, sample: Sample, prediction: str, parse_boxes: BoxParser | None) -> float:
        return float(exact_match(prediction, sample.answer))

"""MMLongBench-Doc's answer-format-aware score (`meta["answer_format"]`; the rules are metrics/mmlongbench.py)."""

from __future__ import annotations

from corehead.data.sample import Sample
from corehead.metrics.mmlongbench import score
from corehead.metrics.tasks.base import TASKS, BoxParser, Task


@TASKS.register("mmlongbench", order=3)
class MMLongBench(Task):
    """The benchmark's own score for the answer's format (string, integer, float, list, none)."""

    def score(self, sample: Sample, prediction: str, parse_boxes: BoxParser | None) -> float:
        return score(prediction, sample.answer, str(sample.meta.get("answer_format", "Str")))

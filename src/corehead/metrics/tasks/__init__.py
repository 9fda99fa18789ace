"""Answer scoring: how a generated answer is compared with the gold one, per task.

A sample says its task in `meta["task"]`, a name in the `TASKS` registry (one small class per module of
this package): `exact` (default: normalized exact match), `choice` (multiple choice: the option letter or
the option's text; `meta["candidates"]`), `grounding` (the first box the model writes, in its own
convention, has IoU >= 0.5 with the region's box) or `mmlongbench` (MMLongBench-Doc's answer-format-aware
score; `meta["answer_format"]`). Scores are in [0, 1]. Pure: the model's box convention comes in as a
callable.
"""

from __future__ import annotations

from corehead.data.sample import Sample
from corehead.metrics.tasks.base import TASKS, BoxParser, Task, normalize_answer
from corehead.metrics.tasks.choice import choice_match
from corehead.metrics.tasks.exact import exact_match
from corehead.metrics.tasks.grounding import box_iou

__all__ = [
    "TASKS",
    "BoxParser",
    "Task",
    "box_iou",
    "choice_match",
    "exact_match",
    "normalize_answer",
    "score_answer",
]


def score_answer(sample: Sample, prediction: str, parse_boxes: BoxParser | None = None) -> float:
    """The sample's task metric for one generated answer, in [0, 1]; grounding answers are read with
    `parse_boxes` (the model's box convention, e.g. `adapter.parse_boxes`)."""
    task = sample.meta.get("task", "exact")
    if task not in TASKS.names():
        raise ValueError(f"sample {sample.id!r}: unknown task {task!r} in meta ({TASKS.help()})")
    return TASKS.get(task)().score(sample, prediction, parse_boxes)

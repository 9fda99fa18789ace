"""Grounding: the first box the model writes, read in its own convention, overlaps the region's box."""

from __future__ import annotations

from corehead.data.sample import Box, Sample
from corehead.metrics.tasks.base import TASKS, BoxParser, Task


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes (0 when either is empty)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@TASKS.register("grounding", order=2)
class Grounding(Task):
    """1 when the first box of the answer has IoU >= 0.5 with the first region's box."""

    def score(self, sample: Sample, prediction: str, parse_boxes: BoxParser | None) -> float:
        if parse_boxes is None:
            raise ValueError("grounding answers are read in the model's box convention: pass parse_boxes")
        region = sample.regions[0]
        gold = region.box
        boxes = parse_boxes(prediction, sample.units[region.unit])
        return float(gold is not None and bool(boxes) and box_iou(boxes[0], gold) >= 0.5)

"""Answer scoring: how a generated answer is compared with the gold one, per task.

A sample says its task in `meta["task"]`: `exact` (default: normalized exact match), `choice` (multiple
choice: the option letter or the option's text; `meta["candidates"]`), `grounding` (the first box the
model writes, in its own convention, has IoU >= 0.5 with the region's box) or `mmlongbench`
(MMLongBench-Doc's answer-format-aware score; `meta["answer_format"]`). Scores are in [0, 1].
"""

from __future__ import annotations

import re
import string
from typing import Any

from corehead.data.sample import Box, Sample

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(prediction: str, gold: str) -> bool:
    """True when the normalized prediction equals the normalized gold answer."""
    return normalize_answer(prediction) == normalize_answer(gold)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes (0 when either is empty)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_LETTER = re.compile(r"^\(?([A-Za-z])[).:]?(?:\s|$)")


def choice_match(prediction: str, gold: str, candidates: list[str]) -> bool:
    """A multiple-choice answer: the gold option's letter (A, (B), C.) or its text, normalized."""
    text = prediction.strip()
    letter = _LETTER.match(text)
    if letter is not None:
        index = ord(letter.group(1).upper()) - ord("A")
        if 0 <= index < len(candidates):
            return normalize_answer(candidates[index]) == normalize_answer(gold)
    return normalize_answer(text) == normalize_answer(gold)


def score_answer(sample: Sample, prediction: str, adapter: Any = None) -> float:
    """The sample's task metric for one generated answer, in [0, 1]."""
    task = sample.meta.get("task", "exact")
    if task == "exact":
        return float(exact_match(prediction, sample.answer))
    if task == "choice":
        return float(choice_match(prediction, sample.answer, list(sample.meta.get("candidates", []))))
    if task == "grounding":
        if adapter is None:
            raise ValueError("grounding answers are read in the model's box convention: pass the adapter")
        region = sample.regions[0]
        gold = region.box
        boxes = adapter.parse_boxes(prediction, sample.units[region.unit])
        return float(gold is not None and bool(boxes) and box_iou(boxes[0], gold) >= 0.5)
    if task == "mmlongbench":
        from corehead.metrics.mmlongbench import score

        return score(prediction, sample.answer, str(sample.meta.get("answer_format", "Str")))
    raise ValueError(f"sample {sample.id!r}: unknown task {task!r} in meta (exact, choice, grounding, mmlongbench)")

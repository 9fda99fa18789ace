"""Multiple choice: the gold option's letter or its text (`meta["candidates"]` lists the options)."""

from __future__ import annotations

import re

from corehead.data.sample import Sample
from corehead.metrics.tasks.base import TASKS, BoxParser, Task, normalize_answer

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


@TASKS.register("choice", order=1)
class Choice(Task):
    """1 when the answer names the gold option, by letter or by text."""

    def score(self, sample: Sample, prediction: str, parse_boxes: BoxParser | None) -> float:
        return float(choice_match(prediction, sample.answer, list(sample.meta.get("candidates", []))))

"""What every task metric shares: the `Task` base class, the `TASKS` registry and answer normalisation."""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from corehead.data.sample import Box, Sample, VisualUnit
from corehead.registry import Registry

# reads the boxes a model wrote, in its own convention, as pixel boxes of a unit (e.g. `adapter.parse_boxes`)
BoxParser = Callable[[str, VisualUnit], list[Box]]

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


class Task(ABC):
    """How one task compares a generated answer with a sample's gold answer."""

    name: ClassVar[str]

    @abstractmethod
    def score(self, sample: Sample, prediction: str, parse_boxes: BoxParser | None) -> float:
        """The answer's score, in [0, 1]."""


TASKS: Registry[Task] = Registry("task", "corehead.metrics.tasks")

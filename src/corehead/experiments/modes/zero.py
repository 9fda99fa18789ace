"""`zero`: a head's slice of the o_proj input set to zero (its contribution removed)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from corehead.attention.interventions import Head, HeadAblation
from corehead.experiments.modes import MODES, AblationMode, Needs


@MODES.register("zero", order=0)
class Zero(AblationMode):
    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        return HeadAblation(heads, mode="zero").apply(model)

"""`query-zero`: a head's query zeroed, so it attends uniformly (the legacy ablation of Retrieval Head and
SparseMM, kept for comparability with their numbers)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from corehead.attention.interventions import Head, QueryZero
from corehead.experiments.modes import MODES, AblationMode, Needs


@MODES.register("query-zero", order=2)
class QueryZeroMode(AblationMode):
    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        return QueryZero(heads).apply(model)

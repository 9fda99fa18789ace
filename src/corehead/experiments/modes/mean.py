"""`mean`: a head's slice of the o_proj input set to its mean over reference samples (the run's first batch)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from corehead.attention.interventions import Head, HeadAblation, head_means
from corehead.data.sample import Sample
from corehead.experiments.modes import MODES, AblationMode, Needs
from corehead.models.base import ChatAdapter


@MODES.register("mean", order=1)
class Mean(AblationMode):
    def means(self, adapter: ChatAdapter, samples: list[Sample], batch_size: int) -> dict[int, torch.Tensor]:
        reference = adapter.collate([adapter.encode(s) for s in samples[:batch_size]])
        return head_means(adapter.model, [{k: v.to(adapter.model.device) for k, v in reference.items()}])

    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        return HeadAblation(heads, mode="mean", means=needs.means).apply(model)

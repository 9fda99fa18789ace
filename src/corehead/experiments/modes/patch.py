"""`patch`: activation patching. At the last prompt token a head's slice takes the value it had on a paired
source sample with another answer (a test of sufficiency, where the other modes test necessity)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch

from corehead.attention.interventions import Head, HeadPatch, capture_head_outputs
from corehead.experiments.modes import MODES, AblationMode, Needs, last_prompt_token
from corehead.models.base import ChatAdapter, Encoded


@MODES.register("patch", order=5)
class Patch(AblationMode):
    paired = True

    def source_outputs(self, adapter: ChatAdapter, sources: list[Encoded]) -> dict[int, torch.Tensor] | None:
        batch = {k: v.to(adapter.model.device) for k, v in adapter.collate(sources).items()}
        return capture_head_outputs(adapter.model, batch, last_prompt_token(sources))

    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        if needs.source is None:
            raise ValueError("mode patch needs the source run's head outputs")
        return HeadPatch(heads, *needs.source).apply(model)

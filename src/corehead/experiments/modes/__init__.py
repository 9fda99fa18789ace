"""Ablation modes, how `ablate` cuts a head: one small class per mode, one file each, registered by name.

A mode knows what it needs (head means over a reference set of samples never evaluated, the keys a batch
may not attend to, the head outputs of each sample's patch source), which samples it cannot cut (`problem`:
mask-region needs an evidence region), and applies itself with the interventions of corehead.attention.
Adding a mode is one new file in this package:

    @MODES.register("my-mode", order=7)
    class MyMode(AblationMode):
        def cut(self, model, heads, needs):
            return MyIntervention(heads).apply(model)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from corehead.attention.interventions import AttentionKnockout, Head
from corehead.data.sample import Sample, SampleError
from corehead.models.base import ChatAdapter, Encoded
from corehead.registry import Registry


@dataclass(frozen=True)
class Needs:
    """What cutting heads on one batch may take: head means per position type and the batch's visual
    positions ([B, L] bool; `mean`), the keys each sample may not attend to ([B, L] bool, the `mask-*`
    modes), the source's head outputs and the positions to write them (`patch`)."""

    means: dict[int, torch.Tensor] = field(default_factory=dict)
    forbid: torch.Tensor | None = None
    source: tuple[dict[int, torch.Tensor], torch.Tensor] | None = None
    visual: torch.Tensor | None = None


class AblationMode(ABC):
    """One way of cutting heads; `paired` modes patch each sample from a source sample (pair_sources),
    modes that take `reference` samples compute head means over them (never the evaluated samples)."""

    name: ClassVar[str]
    paired: ClassVar[bool] = False
    reference: ClassVar[bool] = False

    def problem(self, sample: Sample) -> SampleError | None:
        """Why this mode cannot cut heads on `sample` (None: it can)."""
        return None

    def means(self, adapter: ChatAdapter, reference: list[Sample], batch_size: int) -> dict[int, torch.Tensor]:
        """What the whole run needs once: each head's mean output over the reference samples (mode `mean`)."""
        return {}

    def visual(self, encoded: list[Encoded]) -> torch.Tensor | None:
        """[B, width] visual positions of an encoded batch, for modes that treat them apart (`mean`)."""
        return None

    def source_outputs(self, adapter: ChatAdapter, sources: list[Encoded]) -> dict[int, torch.Tensor] | None:
        """The head outputs of a batch's source samples (mode `patch`), once per batch and condition."""
        return None

    def forbidden(self, samples: list[Sample], encoded: list[Encoded]) -> torch.Tensor | None:
        """[B, width] keys an encoded batch may not attend to (the `mask-*` modes)."""
        return None

    @abstractmethod
    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        """A context in which `heads` are cut for every forward run inside."""

    def applied(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        """`cut`, or nothing when no head is cut (the `none` condition)."""
        return self.cut(model, heads, needs) if heads else nullcontext()


def positions(encoded: list[Encoded], picks: list[np.ndarray]) -> torch.Tensor:
    """[B, width] bool: True at the positions of the visual tokens `picks[b]` (indices into sample b's token
    map) in a left-padded batch."""
    width = max(e.length for e in encoded)
    out = torch.zeros(len(encoded), width, dtype=torch.bool)
    for b, (e, pick) in enumerate(zip(encoded, picks, strict=True)):
        out[b, torch.as_tensor(e.token_map.positions[pick] + width - e.length)] = True
    return out


def visual_positions(encoded: list[Encoded]) -> torch.Tensor:
    """[B, width] bool: the positions of every visual token of a left-padded batch."""
    return positions(encoded, [np.arange(len(e.token_map)) for e in encoded])


def last_prompt_token(encoded: list[Encoded]) -> torch.Tensor:
    """[B] position of each sample's last prompt token in its left-padded batch (where `patch` writes)."""
    width = max(e.length for e in encoded)
    return torch.tensor([e.prompt_end + width - e.length for e in encoded])


MODES: Registry[AblationMode] = Registry("ablation mode", __name__)


def ablation_mode(name: str) -> AblationMode:
    """The mode registered as `name`; an unknown name is an error listing the modes."""
    if name not in MODES.names():
        raise ValueError(f"mode must be one of {MODES.help()}; got {name!r}")
    return MODES.get(name)()


class Knockout(AblationMode):
    """Heads may not attend to some keys of each sample (renormalised over the rest)."""

    @abstractmethod
    def tokens(self, sample: Sample, encoded: Encoded) -> np.ndarray:
        """The indices into the sample's visual token map that are barred."""

    def forbidden(self, samples: list[Sample], encoded: list[Encoded]) -> torch.Tensor:
        """[B, width] keys barred in a left-padded batch: the positions of each sample's `tokens`."""
        return positions(encoded, [self.tokens(s, e) for s, e in zip(samples, encoded, strict=True)])

    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        if needs.forbid is None:
            raise ValueError(f"mode {self.name} needs the forbidden keys of the batch")
        return AttentionKnockout(heads, needs.forbid.to(model.device)).apply(model)

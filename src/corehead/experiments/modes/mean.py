"""`mean`: a head's slice of the o_proj input set to its mean over a reference set of samples that are never
evaluated, taken separately over text and visual positions (each position gets the mean of its type)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from corehead.attention.interventions import Head, HeadAblation, head_means
from corehead.data import load_dataset
from corehead.data.sample import Sample
from corehead.experiments.modes import MODES, AblationMode, Needs, visual_positions
from corehead.models.base import ChatAdapter, Encoded


@MODES.register("mean", order=1)
class Mean(AblationMode):
    reference = True

    def means(self, adapter: ChatAdapter, reference: list[Sample], batch_size: int) -> dict[int, torch.Tensor]:
        def batches() -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
            for start in range(0, len(reference), batch_size):
                encoded = [adapter.encode(s) for s in reference[start : start + batch_size]]
                batch = {k: v.to(adapter.model.device) for k, v in adapter.collate(encoded).items()}
                yield batch, visual_positions(encoded)

        return head_means(adapter.model, batches())

    def visual(self, encoded: list[Encoded]) -> torch.Tensor:
        return visual_positions(encoded)

    def cut(self, model: Any, heads: tuple[Head, ...], needs: Needs) -> AbstractContextManager[Any]:
        return HeadAblation(heads, mode="mean", means=needs.means, visual=needs.visual).apply(model)


def reference_samples(
    spec: str, evaluated: list[Sample], n: int, seed: int, data_seed: int = 0, skip_invalid: bool = False
) -> list[Sample]:
    """Mean ablation's reference set: `n` samples of dataset `spec` that are not evaluated. Synthetic data is
    generated from its own `seed` (another than the evaluated samples' `data_seed`); from a dataset file or
    a public dataset, `n` of the samples not in `evaluated` are drawn with `seed` (all of them if fewer)."""
    if spec.startswith("synthetic:"):
        if seed == data_seed:
            raise ValueError(f"the reference set needs its own seed: --reference-seed {seed} is the data's --seed")
        return load_dataset(spec, n=n, seed=seed)
    taken = {s.id for s in evaluated}
    pool = [s for s in load_dataset(spec, seed=data_seed, skip_invalid=skip_invalid) if s.id not in taken]
    if not pool:
        raise ValueError(f"every sample of {spec} is evaluated: none is left for mean ablation's reference set")
    pick = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[int(i)] for i in sorted(pick)]

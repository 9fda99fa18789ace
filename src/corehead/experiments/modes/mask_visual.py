"""`mask-visual`: a head may not attend to any visual token."""

from __future__ import annotations

import numpy as np

from corehead.data.sample import Sample
from corehead.experiments.modes import MODES, Knockout
from corehead.models.base import Encoded


@MODES.register("mask-visual", order=3)
class MaskVisual(Knockout):
    def tokens(self, sample: Sample, encoded: Encoded) -> np.ndarray:
        return np.arange(len(encoded.token_map))

"""`mask-region`: a head may not attend to the tokens of the sample's evidence region."""

from __future__ import annotations

import numpy as np

from corehead.data.sample import Sample
from corehead.experiments.modes import MODES, Knockout
from corehead.models.base import Encoded, sample_region_tokens


@MODES.register("mask-region", order=4)
class MaskRegion(Knockout):
    def tokens(self, sample: Sample, encoded: Encoded) -> np.ndarray:
        return sample_region_tokens(sample, encoded.token_map).indices

"""`mask-region`: a head may not attend to the tokens of the sample's evidence region. A sample without
one cannot be cut this way: an error naming it, or skipped (and counted) with --skip-invalid."""

from __future__ import annotations

import numpy as np

from corehead.data.sample import Sample, SampleError
from corehead.experiments.modes import MODES, Knockout
from corehead.models.base import Encoded, sample_region_tokens


@MODES.register("mask-region", order=4)
class MaskRegion(Knockout):
    def problem(self, sample: Sample) -> SampleError | None:
        if sample.regions:
            return None
        return SampleError(sample.id, "regions", "mode mask-region needs an evidence region to mask; it has none")

    def tokens(self, sample: Sample, encoded: Encoded) -> np.ndarray:
        error = self.problem(sample)
        if error is not None:
            raise error
        return sample_region_tokens(sample, encoded.token_map).indices

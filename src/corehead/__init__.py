"""corehead: find, prove and exploit Context-aware Retrieval (CoRe) heads in multimodal LLMs."""

import importlib
from typing import Any

from corehead.data import load_dataset
from corehead.data.sample import Region, Sample, SampleError, VisualUnit

__version__ = "0.1.0"
__all__ = [
    "HeadScores",
    "HeadSet",
    "Region",
    "Sample",
    "SampleError",
    "VisualUnit",
    "__version__",
    "ablate",
    "compare_rankings",
    "hybrid",
    "load_dataset",
    "load_model",
    "score_heads",
    "select_heads",
]
_LAZY = {
    "load_model": "corehead.models",
    "hybrid": "corehead.attention.hybrid",
    "ablate": "corehead.experiments.ablate",
    "score_heads": "corehead.experiments.score",
    "HeadScores": "corehead.heads",
    "HeadSet": "corehead.heads",
    "select_heads": "corehead.heads",
    "compare_rankings": "corehead.heads",
}


def __getattr__(name: str) -> Any:
    # these pull in torch and transformers: import them on first use, so data commands start fast
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'corehead' has no attribute {name!r}")

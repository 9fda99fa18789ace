"""corehead: find, prove and exploit Context-aware Retrieval (CoRe) heads in multimodal LLMs."""

from typing import Any

from corehead.data import load_dataset
from corehead.data.sample import Region, Sample, SampleError, VisualUnit

__version__ = "0.1.0"
__all__ = ["Region", "Sample", "SampleError", "VisualUnit", "__version__", "load_dataset", "load_model"]


def __getattr__(name: str) -> Any:
    # load_model pulls in torch and transformers: import it on first use, so data commands start fast
    if name == "load_model":
        from corehead.models import load_model

        return load_model
    raise AttributeError(f"module 'corehead' has no attribute {name!r}")

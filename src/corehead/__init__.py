"""corehead: find, prove and exploit Context-aware Retrieval (CoRe) heads in multimodal LLMs."""

from corehead.data import load_dataset
from corehead.data.sample import Region, Sample, SampleError, VisualUnit
from corehead.models import load_model

__version__ = "0.1.0"
__all__ = ["Region", "Sample", "SampleError", "VisualUnit", "__version__", "load_dataset", "load_model"]

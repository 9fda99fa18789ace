"""Model loading: pick the adapter for a checkpoint's architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from corehead.models.base import Encoded, ModelAdapter, VisualTokenMap
from corehead.models.qwen_vl import QwenVLAdapter

__all__ = ["SUPPORTED", "Encoded", "ModelAdapter", "VisualTokenMap", "load_model", "resolve"]

SUPPORTED: dict[str, str] = {
    "qwen3_vl": "Qwen3-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "qwen2_vl": "Qwen2-VL",
}


def resolve(name_or_path: str) -> str:
    """'builtin' names the shipped model; anything else is a local folder or a hub id."""
    if name_or_path == "builtin":
        from corehead.models.builtin import WEIGHTS

        if not (WEIGHTS / "model.safetensors").exists():
            raise FileNotFoundError(
                f"the built-in model's weights are missing from {WEIGHTS}; run `corehead train-builtin --out {WEIGHTS}`"
            )
        return str(WEIGHTS)
    return name_or_path


def load_model(
    name_or_path: str = "builtin",
    dtype: torch.dtype | str = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> ModelAdapter:
    """Load a vision-language model and wrap it in the adapter for its architecture."""
    path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    family = config.model_type
    if family not in SUPPORTED:
        known = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
        raise ValueError(f"unsupported architecture {family!r} in {name_or_path}; supported: {known}")
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    name = "builtin" if name_or_path == "builtin" else str(Path(name_or_path).name or name_or_path)
    return QwenVLAdapter(model, tokenizer, processor, name)

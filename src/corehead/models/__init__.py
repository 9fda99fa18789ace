"""Model loading: pick the adapter for a checkpoint's architecture.

Each family module exposes `make_adapter(model, tokenizer, path, name)`, which loads the family's image
processor from `path` and returns its `ChatAdapter`. `FAMILIES` maps a config's `model_type` to it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from corehead.models.base import ChatAdapter, Encoded, ModelAdapter, VisualTokenMap
from corehead.models.chat import TEMPLATE_FILES, find_template
from corehead.models.shape import ModelShape

__all__ = [
    "FAMILIES",
    "ChatAdapter",
    "Encoded",
    "ModelAdapter",
    "ModelShape",
    "VisualTokenMap",
    "load_model",
    "resolve",
]

# model_type -> (display name, module holding make_adapter)
FAMILIES: dict[str, tuple[str, str]] = {
    "qwen3_vl": ("Qwen3-VL", "corehead.models.qwen_vl"),
    "qwen2_5_vl": ("Qwen2.5-VL", "corehead.models.qwen_vl"),
    "qwen2_vl": ("Qwen2-VL", "corehead.models.qwen_vl"),
    "internvl": ("InternVL (InternVL3 / InternVL3.5 -hf)", "corehead.models.internvl"),
    "llava_onevision": ("LLaVA-OneVision", "corehead.models.llava"),
    "llava_next": ("LLaVA-NeXT", "corehead.models.llava"),
    "llava": ("LLaVA-1.5", "corehead.models.llava"),
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
    max_pixels: int | None = None,
    max_frames: int | None = None,
    system_prompt: str | None = None,
    no_system_prompt: bool = False,
) -> ChatAdapter:
    """Load a vision-language model (safetensors weights) and wrap it in the adapter for its architecture.

    The prompt is the checkpoint's own chat template (its processor's chat_template.jinja / .json, else its
    tokenizer's); `system_prompt` adds a system turn of one's own, `no_system_prompt` drops the template's
    default one. `max_pixels` caps the pixels fed per image and `max_frames` the frames kept per video
    (uniformly spaced), for long documents and videos.
    """
    path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    family = config.model_type
    if family not in FAMILIES:
        known = ", ".join(f"{k} ({v[0]})" for k, v in FAMILIES.items())
        raise ValueError(f"unsupported architecture {family!r} in {name_or_path}; supported: {known}")
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    name = "builtin" if name_or_path == "builtin" else str(Path(name_or_path).name or name_or_path)
    module = importlib.import_module(FAMILIES[family][1])
    template = find_template(_local(path, TEMPLATE_FILES), tokenizer)
    adapter: ChatAdapter = module.make_adapter(model, tokenizer, path, name, template)
    adapter.set_system_prompt(system_prompt, no_system_prompt)
    if max_pixels is not None:
        adapter.cap_pixels(max_pixels)
    adapter.max_frames = max_frames
    return adapter


def _local(path: str, names: tuple[str, ...]) -> Path | None:
    """The folder holding the checkpoint's files `names` (a hub id's cached snapshot); None when it has none."""
    if Path(path).is_dir():
        return Path(path)
    from transformers.utils import cached_file

    for name in names:
        file = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        if file is not None:
            return Path(file).parent
    return None

"""The real checkpoints' files saved under fixtures/checkpoints/<family>/ (each folder's SOURCE.md says where
every file comes from): chat templates, processor settings, model configs, and the real Qwen2 tokenizer."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from corehead.models.chat import find_template

CHECKPOINTS = Path(__file__).parent / "fixtures" / "checkpoints"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next", "llava_onevision", "internvl")


def folder(family: str) -> Path:
    return CHECKPOINTS / family


def template(family: str) -> str:
    """The family's real chat template (chat_template.jinja or chat_template.json)."""
    text = find_template(folder(family), None)
    if text is None:
        raise FileNotFoundError(f"no chat template saved for {family}")
    return text


def settings(family: str, name: str) -> dict[str, Any] | None:
    """A saved JSON file of the checkpoint (config.json, preprocessor_config.json, ...), None when not found."""
    file = folder(family) / name
    return json.loads(file.read_text()) if file.exists() else None


@cache
def qwen2_tokenizer() -> PreTrainedTokenizerBase:
    """The real Qwen2 / Qwen2.5-VL tokenizer (151k BPE vocabulary with the vision tokens at their real ids)."""
    return AutoTokenizer.from_pretrained(CHECKPOINTS / "tokenizers" / "qwen2_bpe")

"""Shared fixtures: a small random model of the built-in architecture (no weights needed)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from corehead.models.builtin import build_config, build_image_processor, build_tokenizer
from corehead.models.qwen_vl import QwenVLAdapter


@pytest.fixture(scope="session")
def tiny_builtin() -> QwenVLAdapter:
    """The built-in architecture at test size (2 layers x 4 heads), random weights, eval mode."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, small=True)).eval()
    return QwenVLAdapter(model, tokenizer, build_image_processor(), "tiny-builtin")

"""Shared fixtures: the tiny random models of tiny_models.py, each built once per session."""

from __future__ import annotations

import pytest
import tiny_models
import torch
from transformers import PreTrainedTokenizerBase

from corehead.models.internvl import InternVLAdapter
from corehead.models.qwen_vl import QwenVLAdapter

torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """The built-in tokenizer: it has every Qwen-VL special token, so it serves all tiny Qwen configs."""
    return tiny_models.qwen_tokenizer()


@pytest.fixture(scope="session")
def tiny_builtin(tokenizer: PreTrainedTokenizerBase) -> QwenVLAdapter:
    """The built-in architecture (Qwen3-VL) at test size (2 layers x 4 heads), random weights, eval mode."""
    return tiny_models.tiny_builtin()


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tokenizer: PreTrainedTokenizerBase) -> QwenVLAdapter:
    return tiny_models.tiny_qwen2_vl()


@pytest.fixture(scope="session", params=["builtin", "qwen2_vl", "qwen2_5_vl"])
def qwen_family(
    request: pytest.FixtureRequest,
    tokenizer: PreTrainedTokenizerBase,
    tiny_builtin: QwenVLAdapter,
    tiny_qwen2_vl: QwenVLAdapter,
) -> QwenVLAdapter:
    """Each Qwen-VL family in turn: the built-in Qwen3-VL, Qwen2-VL and Qwen2.5-VL, tiny and random."""
    if request.param == "builtin":
        return tiny_builtin
    if request.param == "qwen2_vl":
        return tiny_qwen2_vl
    return tiny_models.tiny_qwen2_5_vl()


@pytest.fixture(scope="session")
def internvl() -> InternVLAdapter:
    """The tiny InternVL (64 px tiles, 8 px patches, 16 tokens per tile)."""
    return tiny_models.tiny_internvl()

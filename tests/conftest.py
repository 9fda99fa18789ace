"""Shared fixtures: small random models of the real architectures, built here (no downloads, no weights)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from corehead.models.builtin import build_config, build_image_processor, build_tokenizer
from corehead.models.qwen_vl import QwenVLAdapter

torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture(scope="session")
def tokenizer():
    """The built-in tokenizer: it has every Qwen-VL special token, so it serves all tiny Qwen configs."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_builtin(tokenizer) -> QwenVLAdapter:
    """The built-in architecture at test size (2 layers x 4 heads), random weights, eval mode."""
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, small=True)).eval()
    return QwenVLAdapter(model, tokenizer, build_image_processor(), "tiny-builtin")


def _tiny_qwen2(tokenizer, family: str) -> QwenVLAdapter:
    def tok(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
        "bos_token_id": tok("<|endoftext|>"),
        "eos_token_id": tok("<|im_end|>"),
        "pad_token_id": tok("<|endoftext|>"),
    }
    ids = {
        "image_token_id": tok("<|image_pad|>"),
        "video_token_id": tok("<|video_pad|>"),
        "vision_start_token_id": tok("<|vision_start|>"),
        "vision_end_token_id": tok("<|vision_end|>"),
    }
    vision = {"depth": 2, "num_heads": 4, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    torch.manual_seed(0)
    if family == "qwen2_vl":
        config = Qwen2VLConfig(
            text_config=text, vision_config={**vision, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}, **ids
        )
        model = Qwen2VLForConditionalGeneration(config)
    else:
        vision25 = {**vision, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64}
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config={**vision25, "window_size": 56, "fullatt_block_indexes": [1]}, **ids
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
    # the real checkpoints' processor: 14 px patches (28 px tokens), CLIP normalisation
    processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, max_pixels=320 * 320)
    return QwenVLAdapter(model.eval(), tokenizer, processor, f"tiny-{family}")


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tokenizer) -> QwenVLAdapter:
    return _tiny_qwen2(tokenizer, "qwen2_vl")


@pytest.fixture(scope="session", params=["builtin", "qwen2_vl", "qwen2_5_vl"])
def qwen_family(request, tokenizer, tiny_builtin, tiny_qwen2_vl) -> QwenVLAdapter:
    """Each Qwen-VL family in turn: the built-in Qwen3-VL, Qwen2-VL and Qwen2.5-VL, tiny and random."""
    if request.param == "builtin":
        return tiny_builtin
    if request.param == "qwen2_vl":
        return tiny_qwen2_vl
    return _tiny_qwen2(tokenizer, request.param)

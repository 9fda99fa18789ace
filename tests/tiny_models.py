"""One tiny builder per architecture family: small random models of the real architectures (no downloads,
no weights), seeded so that every test sees the same numbers.

Qwen3-VL (the built-in architecture), Qwen2-VL, Qwen2.5-VL, LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision and
InternVL. Each text decoder has 2 layers of 4 query heads over 2 KV heads (width 64). conftest.py turns the
Qwen builders and InternVL into session fixtures; `tiny_llava(kind)` is built once per kind.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import checkpoints
import torch
from tokenizers import processors
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from corehead.data.synthetic import COLOURS, DIGITS, SHAPES, TEMPLATES
from corehead.models.builtin import build_config, build_image_processor, build_tokenizer, train_bpe
from corehead.models.internvl import InternVLAdapter
from corehead.models.llava import LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter
from corehead.models.qwen_vl import QwenVLAdapter

TINY_PINPOINTS = [[a, b] for a in (36, 72, 108) for b in (36, 72, 108)]
INTERNVL_SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
TILE, PATCH = 64, 8  # InternVL's tiles and patches
MAX_PATCHES = 6


# --------------------------------------------------------------------------- shared pieces


def text_config(vocab_size: int, bos: int | None, eos: int | None, pad: int | None, **extra: Any) -> dict[str, Any]:
    """The text decoder of every tiny model: 2 layers, 4 query heads over 2 KV heads, width 64."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        **extra,
    }


# --------------------------------------------------------------------------- Qwen-VL


@cache
def qwen_tokenizer() -> PreTrainedTokenizerBase:
    """The built-in tokenizer: it has every Qwen-VL special token, so it serves all tiny Qwen configs."""
    return build_tokenizer()


def tiny_builtin() -> QwenVLAdapter:
    """Qwen3-VL: the built-in architecture at test size (2 layers x 4 heads), random weights, eval mode."""
    tokenizer = qwen_tokenizer()
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, small=True)).eval()
    return QwenVLAdapter(model, tokenizer, build_image_processor(), "tiny-builtin")


def tiny_qwen2_vl() -> QwenVLAdapter:
    """Qwen2-VL with the real checkpoints' processor (14 px patches, CLIP normalisation)."""
    return _tiny_qwen2("qwen2_vl")


def tiny_qwen2_5_vl() -> QwenVLAdapter:
    """Qwen2.5-VL (window attention in the vision tower, one full-attention block), the real processor."""
    return _tiny_qwen2("qwen2_5_vl")


def _tiny_qwen2(family: str) -> QwenVLAdapter:
    tokenizer = qwen_tokenizer()

    def tok(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    text = text_config(
        len(tokenizer), tok("<|endoftext|>"), tok("<|im_end|>"), tok("<|endoftext|>"), rope_parameters=rope
    )
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
    # the real checkpoints' processor (14 px patches, 28 px tokens, CLIP normalisation) and chat template
    processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, max_pixels=320 * 320)
    template = checkpoints.template(family)
    return QwenVLAdapter(model.eval(), tokenizer, processor, f"tiny-{family}", template)


# --------------------------------------------------------------------------- LLaVA


def _llava_corpus() -> list[str]:
    lines = ["USER: ASSISTANT: [INST] [/INST] user\n assistant\n", *COLOURS, *DIGITS, *SHAPES]
    for templates in TEMPLATES.values():
        lines += [t.format(key=k, t0=2, t1=4) for t in templates for k in SHAPES]
    return lines


@cache
def llava_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """ByteLevel BPE with the family's special tokens; 'llama' adds <s> itself, like Llama tokenizers."""
    specials = {
        "llama": ["<s>", "</s>", "<pad>", "<image>"],
        "qwen": ["<|im_start|>", "<|im_end|>", "<pad>", "<image>", "<video>"],
        "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>", "<image>"],
    }[style]
    tok = train_bpe(_llava_corpus(), specials, 400)
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>" if style == "llama" else None,
        eos_token={"llama": "</s>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>"}[style],
        pad_token="<pad>",
        unk_token=None,
    )


def llava_text_config(tok: PreTrainedTokenizerFast, model_type: str) -> dict[str, Any]:
    """The tiny text decoder of `model_type` ('llama', 'qwen2', 'mistral') over `tok`."""
    return text_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, model_type=model_type)


def _vision(model_type: str, image_size: int, patch_size: int) -> dict[str, Any]:
    extra = {"vision_use_head": False} if model_type == "siglip_vision_model" else {}
    return {
        "model_type": model_type,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        **extra,
    }


def _kind(family: str, scale: str) -> str:
    return f"{family}-{scale}" if scale else family


def tiny_llava_15(scale: str = "") -> LlavaAdapter:
    """LLaVA-1.5 (CLIP tower, Llama text). scale '': 36 px tiles of 8 px patches (4 a side, the last 4 px of
    each tile unseen); 'pad': each image padded to a square before resizing (do_pad); 'squash': resized to
    the tile; 'real': the real checkpoints' 336 px tiles of 14 px patches."""
    real = scale == "real"
    torch.manual_seed(0)
    tok = llava_tokenizer("llama")
    side, patch = (336, 14) if real else (36, 8)
    config = LlavaConfig(
        text_config=llava_text_config(tok, "llama"),
        vision_config=_vision("clip_vision_model", side, patch),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    proc = LlavaImageProcessorPil(
        size={"height": side, "width": side} if scale == "squash" else {"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_center_crop=scale != "squash",
        do_pad=scale == "pad",
    )
    return LlavaAdapter(LlavaForConditionalGeneration(config).eval(), tok, proc, _kind("llava", scale))


def tiny_llava_next(scale: str = "") -> LlavaNextAdapter:
    """LLaVA-NeXT (anyres tiles, CLIP, Llama text). scale '': 36 px tiles of 8 px patches on a 3x3 grid of
    pinpoints; 'real': the real checkpoints' tiles, patches and pinpoints."""
    real = scale == "real"
    torch.manual_seed(0)
    tok = llava_tokenizer("llama")
    side, patch = (336, 14) if real else (36, 8)
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] if real else TINY_PINPOINTS
    config = LlavaNextConfig(
        text_config=llava_text_config(tok, "llama"),
        vision_config=_vision("clip_vision_model", side, patch),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
    )
    proc = LlavaNextImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}, image_grid_pinpoints=pinpoints
    )
    return LlavaNextAdapter(LlavaNextForConditionalGeneration(config).eval(), tok, proc, _kind("next", scale))


def tiny_llava_onevision(scale: str = "") -> LlavaOnevisionAdapter:
    """LLaVA-OneVision (anyres_max_9, SigLIP, Qwen2 text, video). scale '': 36 px tiles of 8 px patches;
    'real': the real checkpoints' 384 px tiles of 14 px patches and 6x6 pinpoints."""
    real = scale == "real"
    torch.manual_seed(0)
    tok = llava_tokenizer("qwen")
    side, patch = (384, 14) if real else (36, 8)
    pinpoints = [[a * side, b * side] for a in range(1, 7) for b in range(1, 7)] if real else TINY_PINPOINTS
    config = LlavaOnevisionConfig(
        text_config=llava_text_config(tok, "qwen2"),
        vision_config=_vision("siglip_vision_model", side, patch),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
    )
    proc = LlavaOnevisionImageProcessorPil(
        size={"height": side, "width": side}, image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    return LlavaOnevisionAdapter(model, tok, proc, _kind("onevision", scale))


LLAVA_FAMILIES = {"llava": tiny_llava_15, "next": tiny_llava_next, "onevision": tiny_llava_onevision}


@cache
def tiny_llava(kind: str) -> LlavaAdapter:
    """The LLaVA family named by `kind`, built once: 'llava', 'next' or 'onevision', with a scale after a
    dash ('-real' for all three, '-pad' and '-squash' for 'llava'); the adapter is named `kind`."""
    family, _, scale = kind.partition("-")
    return LLAVA_FAMILIES[family](scale)


# --------------------------------------------------------------------------- InternVL


def internvl_tokenizer(specials: list[str]) -> PreTrainedTokenizerFast:
    """A small ByteLevel BPE with `specials` (InternVL's image tokens, or fewer to test the refusal)."""
    tok = train_bpe(["user assistant Frame1: What colour is the star? Which number is next to it?"], specials, 300)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")


def internvl_processor(max_patches: int = MAX_PATCHES) -> GotOcr2ImageProcessorPil:
    """InternVL's tiling processor at 64 px tiles, up to `max_patches` tiles (and a thumbnail)."""
    return GotOcr2ImageProcessorPil(
        size={"height": TILE, "width": TILE}, max_patches=max_patches, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def tiny_internvl() -> InternVLAdapter:
    """A tiny random InternVL (64 px tiles, 8 px patches, 16 tokens per tile): Qwen2 text, InternViT (2 layers,
    width 32)."""
    tokenizer = internvl_tokenizer(INTERNVL_SPECIALS)

    def tok(token: str) -> int:
        return int(tokenizer.get_vocab()[token])

    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TILE,
            "patch_size": PATCH,
        },
        text_config=text_config(len(tokenizer), tok("<pad>"), tok("<|im_end|>"), tok("<pad>"), model_type="qwen2"),
        image_token_id=tok("<IMG_CONTEXT>"),
        image_seq_length=(TILE // PATCH // 2) ** 2,
        downsample_ratio=0.5,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    return InternVLAdapter(model, tokenizer, internvl_processor(), "tiny-internvl")

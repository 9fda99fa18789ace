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


# ------------------------------------------------- published settings of checkpoints whose files were not found

# Qwen/Qwen2-VL-7B-Instruct and -2B-Instruct ship this preprocessor_config.json, the same settings as the saved
# Qwen2.5-VL file (asserted in test_published_settings). Qwen2VLImageProcessor's class defaults differ: its
# longest_edge is 28 * 28 * 1280 = 1003520 pixels, not 12845056, so the defaults are NOT the checkpoint's.
QWEN2_VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}
# llava-hf/llava-onevision-qwen2-*-ov-hf: transformers' conversion script (convert_llava_onevision_weights_to_hf.py,
# commit 01080c62) loads both the image and the video processor from google/siglip-so400m-patch14-384, whose
# preprocessor_config.json sets 384x384, mean/std 0.5 and bicubic; pinpoints, do_pad and the rest are
# LlavaOnevisionImageProcessor's class defaults. The class defaults alone would normalise with CLIP's mean/std.
ONEVISION_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "do_pad": True,
    "do_convert_rgb": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 384, "width": 384},
    "image_grid_pinpoints": [[a * 384, b * 384] for a in range(1, 7) for b in range(1, 7)],
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "processor_class": "LlavaOnevisionProcessor",
}
# OpenGVLab/InternVL3-*-hf: the conversion script (convert_internvl_weights_to_hf.py, see internvl/SOURCE.md) saves
# GotOcr2ImageProcessorFast(size 448x448, ImageNet mean/std, rescale 1/255, convert_rgb) with the class defaults
# min_patches 1, max_patches 12, crop_to_patches false (InternVLProcessor turns tiling on per call); its
# InternVLVideoProcessor is loaded from the same file. The class defaults alone would be 384 px and CLIP mean/std.
INTERNVL_PREPROCESSOR = {
    "do_resize": True,
    "size": {"height": 448, "width": 448},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
    "resample": 3,
    "crop_to_patches": False,
    "min_patches": 1,
    "max_patches": 12,
    "image_processor_type": "GotOcr2ImageProcessorFast",
    "processor_class": "InternVLProcessor",
}
# processor_config.json: LLaVA-1.5's is saved; llava-v1.6's (not found) has the same values, which its model
# config (CLIP patch 14 with a class token, strategy "default") requires. OneVision's values are the conversion
# script's (num_image_tokens=729, vision_feature_select_strategy="full", anyres_max_9).
LLAVA_NEXT_PROCESSOR = {
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
    "num_additional_image_tokens": 1,
    "processor_class": "LlavaNextProcessor",
}
ONEVISION_PROCESSOR = {
    "num_image_tokens": 729,
    "vision_aspect_ratio": "anyres_max_9",
    "vision_feature_select_strategy": "full",
    "processor_class": "LlavaOnevisionProcessor",
}
PUBLISHED: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2_vl": {"preprocessor_config.json": QWEN2_VL_PREPROCESSOR},
    "llava_next": {"processor_config.json": LLAVA_NEXT_PROCESSOR},
    "llava_onevision": {
        "preprocessor_config.json": ONEVISION_PREPROCESSOR,
        "processor_config.json": ONEVISION_PROCESSOR,
    },
    "internvl": {"preprocessor_config.json": INTERNVL_PREPROCESSOR},
}


def published(family: str, name: str) -> dict[str, Any]:
    """A checkpoint file's settings: the saved file, else the published values written above (KeyError: neither)."""
    return settings(family, name) or PUBLISHED[family][name]

"""Every family at its real checkpoint's geometry, end to end through the command line (slow).

Each model is built from a real checkpoint's config (widths, query and KV heads, head_dim, rope, vision tower,
patch, merge, tiles, pinpoints, downsample ratio) with few layers, random float32 weights and the test
tokenizer's small vocabulary (vocab_size and every special token id of the config point into it: the vocabulary
is not geometry). It is saved with `save_pretrained` beside that tokenizer, the real processor settings and the
real chat template, so that it loads as a user's checkpoint folder does. Where the real config.json or
preprocessor_config.json is saved under fixtures/checkpoints/<family>/ it is used, with only layers, vocabulary
and token ids changed; elsewhere the named checkpoint's published values are written by hand below (so marked).

On one 640x480 image and, for the families that take video, one 4-frame 320x240 video:
- the folder loads, keeps the real decoder geometry and chat template, and each input gets exactly as many
  placeholder tokens as transformers' processor computes for it;
- `corehead score` answers both inputs (a forward in which the model checks its vision features against those
  placeholders); `corehead ablate --mode zero` and `corehead accelerate --prefill` answer one input, the video
  where there is one, else the image.

The budget (about 3 minutes on 2 cores) sets the cuts: one decoder layer (two for the 2B Qwen2-VL), one vision
layer where one shows the structure (two for Qwen2.5-VL's windowed and full blocks and for CLIP, whose features
come from the second-to-last layer), ablation without same-size controls, and the `core` KV method alone.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import checkpoints
import numpy as np
import pytest
import tiny_models
import torch
from helpers import invoke
from PIL import Image, ImageDraw
from transformers import (
    InternVLForConditionalGeneration,
    InternVLProcessor,
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
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

from corehead.data import load_dataset
from corehead.models import load_model

pytestmark = [
    pytest.mark.slow,
    # LLaVA-NeXT's real template ends turns with the literal text <\s>, which jinja's lexer warns about
    pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning"),
]

IMAGE_SIZE = (640, 480)  # width, height
FRAME_SIZE = (320, 240)
FRAMES = 4

Json = dict[str, Any]


# --------------------------------------------------------------------------- published values written by hand

# Qwen/Qwen2-VL-2B-Instruct config.json (hub file as published; written by hand): the 2B sibling of the 7B, whose
# decoder is 1536 wide with 12 query heads over 2 KV heads (head_dim 128), mrope sections 16/24/24, and the same
# 675M ViT as every Qwen2-VL (32 blocks, 1280 wide, 14 px patches, 2x2 merge, temporal patch 2).
QWEN2_VL_2B: Json = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "hidden_act": "silu",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}
# Qwen/Qwen2-VL-{2B,7B}-Instruct preprocessor_config.json (written by hand; the same values as Qwen2.5-VL's saved file)
QWEN2_VL_PROCESSOR: Json = checkpoints.PUBLISHED["qwen2_vl"]["preprocessor_config.json"]

# llava-hf/llava-v1.6-mistral-7b-hf config.json (written by hand; the LlavaNextConfig defaults are this checkpoint):
# Mistral-7B-Instruct-v0.2 (4096 wide, 32 query heads over 8 KV heads, rope theta 1e6, no sliding window) on
# CLIP ViT-L/14 at 336 px, anyres over five pinpoints, features from the second-to-last layer without CLS.
LLAVA_NEXT_MISTRAL_7B: Json = {
    "architectures": ["LlavaNextForConditionalGeneration"],
    "model_type": "llava_next",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_token_index": 32000,
    "projector_hidden_act": "gelu",
    "use_image_newline_parameter": True,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "tie_word_embeddings": False,
    "vocab_size": 32064,
    "text_config": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "vocab_size": 32064,
    },
    "vision_config": {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000,
    },
}
# llava-hf/llava-v1.6-mistral-7b-hf processor_config.json settings (written by hand)
LLAVA_NEXT_PROCESSOR: Json = checkpoints.PUBLISHED["llava_next"]["processor_config.json"]

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf config.json (written by hand): Qwen2-0.5B (896 wide, 14 query heads over
# 2 KV heads) on SigLIP so400m at 384 px (26 of its 27 layers, all 729 patch features), anyres_max_9 over 6x6
# pinpoints of 384 px tiles; the LlavaOnevisionConfig defaults are the 7B sibling, with the same vision settings.
ONEVISION_PINPOINTS = [[384 * a, 384 * b] for a in range(1, 7) for b in range(1, 7)]
LLAVA_ONEVISION_05B: Json = {
    "architectures": ["LlavaOnevisionForConditionalGeneration"],
    "model_type": "llava_onevision",
    "image_grid_pinpoints": ONEVISION_PINPOINTS,
    "image_token_index": 151646,
    "video_token_index": 151647,
    "projector_hidden_act": "gelu",
    "vision_aspect_ratio": "anyres_max_9",
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "full",
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "num_hidden_layers": 24,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "vocab_size": 152000,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "image_size": 384,
        "intermediate_size": 4304,
        "num_attention_heads": 16,
        "num_hidden_layers": 26,
        "patch_size": 14,
        "vision_use_head": False,
    },
}
# llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf preprocessor_config.json and processor settings (written by hand)
LLAVA_ONEVISION_IMAGE_PROCESSOR: Json = checkpoints.PUBLISHED["llava_onevision"]["preprocessor_config.json"]
LLAVA_ONEVISION_PROCESSOR: Json = checkpoints.PUBLISHED["llava_onevision"]["processor_config.json"]

# OpenGVLab/InternVL3-1B-hf config.json (written by hand; the InternVLConfig defaults are this checkpoint): Qwen2.5-0.5B
# (896 wide, 14 query heads over 2 KV heads) on InternViT-300M-448px-V2_5 (24 layers, 1024 wide, 14 px patches,
# qkv biases), pixel shuffle 0.5: 256 tokens per 448 px tile.
INTERNVL3_1B: Json = {
    "architectures": ["InternVLForConditionalGeneration"],
    "model_type": "internvl",
    "downsample_ratio": 0.5,
    "image_seq_length": 256,
    "image_token_id": 151667,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "num_hidden_layers": 24,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    },
    "vision_config": {
        "model_type": "internvl_vision",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "image_size": [448, 448],
        "patch_size": [14, 14],
        "attention_bias": True,
        "use_qk_norm": False,
        "norm_type": "layer_norm",
        "layer_norm_eps": 1e-06,
        "hidden_act": "gelu",
        "use_absolute_position_embeddings": True,
    },
}
# OpenGVLab/InternVL3-1B-hf preprocessor_config.json (written by hand from the conversion script's
# write_image_processor: GotOcr2ImageProcessorFast at 448 px with ImageNet mean/std, class defaults for the rest:
# 1 to 12 tiles; InternVLProcessor turns crop_to_patches on)
INTERNVL_IMAGE_PROCESSOR: Json = checkpoints.PUBLISHED["internvl"]["preprocessor_config.json"]


# --------------------------------------------------------------------------- the families


def _vocab(tok: PreTrainedTokenizerBase, *tokens: str) -> list[int]:
    """The small tokenizer's ids of `tokens` (each must be in its vocabulary)."""
    vocab = tok.get_vocab()
    return [int(vocab[t]) for t in tokens]


def _qwen(source: Json, tok: PreTrainedTokenizerBase, layers: int, vision_layers: int) -> Json:
    """A Qwen-VL config cut to `layers` decoder layers and `vision_layers` ViT blocks, over the small vocabulary."""
    config = copy.deepcopy(source)
    text = config.get("text_config", config)  # Qwen3-VL nests its decoder; Qwen2(.5)-VL's files are flat
    endoftext, im_end, image, video, start, end = _vocab(
        tok, "<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    text.update(num_hidden_layers=layers, vocab_size=len(tok), bos_token_id=endoftext, eos_token_id=im_end)
    config.update(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)
    config.pop("vision_token_id", None)  # <|vision_pad|>: not in the small vocabulary, and no code reads it
    vision = config["vision_config"]
    vision["depth"] = vision_layers
    # block lists of the real 32 / 27-block towers, moved into the cut one: Qwen2.5-VL's last block attends in
    # full (the others in windows), Qwen3-VL's first block feeds a deepstack merger
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [vision_layers - 1]
    if "deepstack_visual_indexes" in vision:
        vision["deepstack_visual_indexes"] = [0]
    return config


def _llava(source: Json, tok: PreTrainedTokenizerBase, layers: int, vision_layers: int) -> Json:
    """A LLaVA-family config cut to `layers` decoder layers and `vision_layers` ViT layers, over the small vocabulary."""
    config = copy.deepcopy(source)
    config["text_config"].update(
        num_hidden_layers=layers,
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config["vision_config"]["num_hidden_layers"] = vision_layers
    config["image_token_index"] = _vocab(tok, "<image>")[0]
    if "video_token_index" in config:
        config["video_token_index"] = _vocab(tok, "<video>")[0]
    if "vocab_size" in config:  # LLaVA-1.5's file repeats it at the top, with its pad token
        config["vocab_size"] = len(tok)
    if "pad_token_id" in config:
        config["pad_token_id"] = tok.pad_token_id
    return config


def _internvl(source: Json, tok: PreTrainedTokenizerBase, layers: int, vision_layers: int) -> Json:
    """InternVL cut to `layers` decoder layers and `vision_layers` ViT layers, over the small vocabulary."""
    config = copy.deepcopy(source)
    config["text_config"].update(
        num_hidden_layers=layers, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    config["vision_config"]["num_hidden_layers"] = vision_layers
    config["image_token_id"] = _vocab(tok, "<IMG_CONTEXT>")[0]
    return config


def _saved(family: str, name: str) -> Json:
    """A real checkpoint file saved under fixtures/checkpoints/<family>/."""
    settings = checkpoints.settings(family, name)
    assert settings is not None, f"{family}/{name} is not saved"
    return settings


def _internvl_tokenizer() -> PreTrainedTokenizerBase:
    return tiny_models.internvl_tokenizer(tiny_models.INTERNVL_SPECIALS)


Cut = Callable[[Json, PreTrainedTokenizerBase, int, int], Json]


@dataclass(frozen=True)
class Family:
    """One family at a real checkpoint's geometry: where its config and processor settings come from, and how
    far it is cut."""

    name: str
    checkpoint: str  # the real checkpoint whose config this is, and where the values come from
    model: type[PreTrainedModel]
    tokenizer: Callable[[], PreTrainedTokenizerBase]
    source: Callable[[], Json]  # the checkpoint's config.json (saved, or written by hand)
    cut: Cut  # (config, tokenizer, decoder layers, vision layers) -> the config built here
    files: Callable[[], dict[str, Json | Path]]  # processor settings beside the model: written, or a saved file copied
    decoder: tuple[int, int, int, int]  # the checkpoint's width, query heads, KV heads, head_dim (published)
    video: bool
    layers: int = 1  # decoder layers kept
    vision_layers: int = 1  # vision tower layers kept

    def config(self) -> Json:
        """The config this test builds: the checkpoint's, cut, over the small tokenizer."""
        return self.cut(self.source(), self.tokenizer(), self.layers, self.vision_layers)


def _files(family: str, *names: str) -> Callable[[], dict[str, Json | Path]]:
    """The real checkpoint's files saved under fixtures/checkpoints/<family>/, copied as they are."""
    return lambda: {name: checkpoints.folder(family) / name for name in names}


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen2_vl",
            checkpoint="Qwen/Qwen2-VL-2B-Instruct (hand-written)",
            model=Qwen2VLForConditionalGeneration,
            tokenizer=tiny_models.qwen_tokenizer,
            source=lambda: QWEN2_VL_2B,
            cut=_qwen,
            files=lambda: {"preprocessor_config.json": QWEN2_VL_PROCESSOR},
            decoder=(1536, 12, 2, 128),
            video=True,
            layers=2,  # the 2B decoder is cheap enough for two
        ),
        Family(
            name="qwen2_5_vl",
            checkpoint="Qwen/Qwen2.5-VL-7B-Instruct (saved files)",
            model=Qwen2_5_VLForConditionalGeneration,
            tokenizer=tiny_models.qwen_tokenizer,
            source=lambda: _saved("qwen2_5_vl", "config.json"),
            cut=_qwen,
            files=_files("qwen2_5_vl", "preprocessor_config.json"),
            decoder=(3584, 28, 4, 128),
            video=True,
            vision_layers=2,  # a windowed block and a full-attention one
        ),
        Family(
            name="qwen3_vl",
            checkpoint="Qwen/Qwen3-VL-8B-Instruct (saved files)",
            model=Qwen3VLForConditionalGeneration,
            tokenizer=tiny_models.qwen_tokenizer,
            source=lambda: _saved("qwen3_vl", "config.json"),
            cut=_qwen,
            files=_files("qwen3_vl", "preprocessor_config.json", "video_preprocessor_config.json"),
            decoder=(4096, 32, 8, 128),
            video=True,
        ),
        Family(
            name="llava",
            checkpoint="llava-hf/llava-1.5-7b-hf (saved files)",
            model=LlavaForConditionalGeneration,
            tokenizer=lambda: tiny_models.llava_tokenizer("llama"),
            source=lambda: _saved("llava", "config.json"),
            cut=_llava,
            files=_files("llava", "preprocessor_config.json", "processor_config.json"),
            decoder=(4096, 32, 32, 128),
            video=False,
            vision_layers=2,  # features come from the second-to-last layer
        ),
        Family(
            name="llava_next",
            checkpoint="llava-hf/llava-v1.6-mistral-7b-hf (config hand-written, preprocessor_config.json saved)",
            model=LlavaNextForConditionalGeneration,
            tokenizer=lambda: tiny_models.llava_tokenizer("llama"),
            source=lambda: LLAVA_NEXT_MISTRAL_7B,
            cut=_llava,
            files=lambda: {
                "preprocessor_config.json": checkpoints.folder("llava_next") / "preprocessor_config.json",
                "processor_config.json": LLAVA_NEXT_PROCESSOR,
            },
            decoder=(4096, 32, 8, 128),
            video=False,
            vision_layers=2,  # features come from the second-to-last layer
        ),
        Family(
            name="llava_onevision",
            checkpoint="llava-hf/llava-onevision-qwen2-0.5b-ov-hf (hand-written)",
            model=LlavaOnevisionForConditionalGeneration,
            tokenizer=lambda: tiny_models.llava_tokenizer("qwen"),
            source=lambda: LLAVA_ONEVISION_05B,
            cut=_llava,
            files=lambda: {
                "preprocessor_config.json": LLAVA_ONEVISION_IMAGE_PROCESSOR,
                "processor_config.json": LLAVA_ONEVISION_PROCESSOR,
            },
            decoder=(896, 14, 2, 64),
            video=True,
        ),
        Family(
            name="internvl",
            checkpoint="OpenGVLab/InternVL3-1B-hf (hand-written)",
            model=InternVLForConditionalGeneration,
            tokenizer=_internvl_tokenizer,
            source=lambda: INTERNVL3_1B,
            cut=_internvl,
            files=lambda: {"preprocessor_config.json": INTERNVL_IMAGE_PROCESSOR},
            decoder=(896, 14, 2, 64),
            video=True,
        ),
    )
}


def build(family: Family, folder: Path) -> Path:
    """The family's model (random float32 weights), small tokenizer, real processor settings and real chat template,
    saved as a checkpoint folder."""
    tok = family.tokenizer()
    config_class = family.model.config_class
    assert config_class is not None
    config = config_class.from_dict(family.config())
    torch.manual_seed(0)
    model = family.model(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for name, settings in family.files().items():
        if isinstance(settings, Path):
            shutil.copyfile(settings, folder / name)
        else:
            (folder / name).write_text(json.dumps(settings, indent=2))
    (folder / "chat_template.jinja").write_text(checkpoints.template(family.name))
    return folder


# --------------------------------------------------------------------------- data: one image, one short video


def _scene(
    size: tuple[int, int], target: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]
) -> Image.Image:
    """A grey picture with a red target square and blue distractor squares (boxes x0, y0, x1, y1)."""
    image = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.rectangle(target, fill=(220, 30, 30))
    for box in others:
        draw.rectangle(box, fill=(30, 30, 220))
    return image


def _row(sid: str, units: list[Json], regions: list[Json], distractors: list[Json]) -> Json:
    question = "What colour is the square?"
    return {
        "id": sid,
        "units": units,
        "question": question,
        "answer": "red",
        "regions": regions,
        "distractors": distractors,
    }


def write_data(folder: Path) -> Path:
    """image.jsonl (one 640x480 image), video.jsonl (4 frames of 320x240 at 2 fps, the target moving right, its
    region a tube on frames 1-2) and both.jsonl, in corehead's JSONL format (docs/data-format.md)."""
    target, others = (400, 200, 480, 280), [(60, 60, 140, 140), (200, 340, 280, 420)]
    _scene(IMAGE_SIZE, target, others).save(folder / "image.png")
    image = _row(
        "image",
        [{"kind": "image", "source": "image.png", "width": IMAGE_SIZE[0], "height": IMAGE_SIZE[1]}],
        [{"unit": 0, "box": list(target)}],
        [{"unit": 0, "box": list(box), "object": f"blue-{k}"} for k, box in enumerate(others)],
    )
    units, tube, distractors = [], [], []
    for frame in range(FRAMES):
        moving, still = (40 + 50 * frame, 80, 100 + 50 * frame, 140), (20, 170, 70, 220)
        _scene(FRAME_SIZE, moving, [still]).save(folder / f"frame{frame}.png")
        size = {"width": FRAME_SIZE[0], "height": FRAME_SIZE[1]}
        units.append({"kind": "frame", "source": f"frame{frame}.png", **size, "frame": frame, "timestamp": frame / 2})
        if frame in (1, 2):
            tube.append({"unit": frame, "box": list(moving)})
            distractors.append({"unit": frame, "box": list(still), "object": "blue"})
    video = _row("video", units, tube, distractors)
    for name, rows in (("image", [image]), ("video", [video]), ("both", [image, video])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


# --------------------------------------------------------------------------- what transformers' processors compute


def expected_tokens(family: Family, folder: Path, config: PreTrainedConfig) -> tuple[int, int | None]:
    """Placeholder tokens transformers' processor writes for the image and the video (None: no video), from the
    checkpoint's processor settings."""
    (width, height), (frame_w, frame_h) = IMAGE_SIZE, FRAME_SIZE
    if family.name.startswith("qwen"):  # Qwen2VLProcessor: the image's patches // merge^2; a video's per frame pair
        qwen = Qwen2VLImageProcessorPil.from_pretrained(folder)
        merged = qwen.merge_size**2
        pairs = -(-FRAMES // qwen.temporal_patch_size)
        frame = qwen.get_number_of_image_patches(frame_h, frame_w, {}) // merged
        return qwen.get_number_of_image_patches(height, width, {}) // merged, pairs * frame
    if family.name in ("llava", "llava_next"):  # LlavaProcessor / LlavaNextProcessor with the checkpoint's settings
        settings = json.loads((folder / "processor_config.json").read_text())
        keys = ("patch_size", "num_additional_image_tokens", "vision_feature_select_strategy")
        kind: Any = LlavaProcessor if family.name == "llava" else LlavaNextProcessor
        images: Any = LlavaImageProcessorPil if family.name == "llava" else LlavaNextImageProcessorPil
        llava = kind(
            image_processor=images.from_pretrained(folder),
            tokenizer=family.tokenizer(),
            **{k: settings[k] for k in keys},
        )
        return llava._get_num_multimodal_tokens(image_sizes=[[height, width]]).num_image_tokens[0], None
    if family.name == "llava_onevision":
        # the processor class cannot be built here (its video processor needs torchvision): its counting methods
        # on an instance holding just the settings they read
        settings = json.loads((folder / "processor_config.json").read_text())
        onevision: Any = object.__new__(LlavaOnevisionProcessor)
        onevision.image_processor = LlavaOnevisionImageProcessorPil.from_pretrained(folder)
        onevision.num_image_tokens = settings["num_image_tokens"]
        onevision.vision_aspect_ratio = settings["vision_aspect_ratio"]
        tile = onevision.image_processor.size.height
        image = onevision._get_number_of_features(height, width, tile, tile)
        video = onevision._get_num_multimodal_tokens(video_sizes=[[FRAMES, frame_h, frame_w]]).num_video_tokens[0]
        return image, video
    # InternVLProcessor: image_seq_length per tile (+ thumbnail), tiles with its crop_to_patches; a frame is one tile
    tiling = GotOcr2ImageProcessorPil.from_pretrained(folder)
    tiles = tiling.get_number_of_image_patches(height, width, dict(InternVLProcessor.images_kwargs))
    return tiles * config.image_seq_length, FRAMES * config.image_seq_length


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def threads() -> Iterator[None]:
    """Both cores: conftest's one thread suits the tiny models, not matrices thousands wide."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("real-size-data"))


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Family, Path]]:
    """The family's checkpoint folder, built once for its tests and removed after (up to 1 GB of weights)."""
    family = FAMILIES[request.param]
    folder = build(family, tmp_path_factory.mktemp(family.name))
    yield family, folder
    shutil.rmtree(folder)


# --------------------------------------------------------------------------- tests


def _decoder(config: PreTrainedConfig) -> tuple[int, int, int, int]:
    """Width, query heads, KV heads and head_dim of a loaded model's decoder."""
    text = config.get_text_config()
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return int(text.hidden_size), heads, int(text.num_key_value_heads), int(head_dim)


def test_visual_tokens_are_what_the_processor_writes(checkpoint: tuple[Family, Path], data: Path) -> None:
    """The folder loads as a checkpoint with the real decoder geometry and chat template, and each visual input
    gets exactly as many placeholder tokens as transformers' processor gives it."""
    family, folder = checkpoint
    adapter = load_model(str(folder))
    config = adapter.model.config
    assert _decoder(config) == family.decoder, family.checkpoint
    assert config.get_text_config().num_hidden_layers == family.layers
    assert adapter.chat.source == "checkpoint template"
    image_count, video_count = expected_tokens(family, folder, config)
    counts = {"image": image_count} if video_count is None else {"image": image_count, "video": video_count}
    found = {}
    for kind in counts:
        (sample,) = load_dataset(str(data / f"{kind}.jsonl"))
        encoded = adapter.encode(sample)
        token = config.image_token_id if kind == "image" else getattr(config, "video_token_id", config.image_token_id)
        found[kind] = int((encoded.inputs["input_ids"][0] == token).sum())
        assert 0 < len(encoded.token_map) <= found[kind]  # anyres: the row newlines cover no pixel
    assert found == counts, f"{family.name}: corehead wrote {found} visual tokens, the processor {counts}"


def test_score_ablate_accelerate_end_to_end(checkpoint: tuple[Family, Path], data: Path, tmp_path: Path) -> None:
    """`corehead score` (on the image and the video), `ablate --mode zero` and `accelerate --prefill` (on the video
    where the family takes one, else the image) from the checkpoint folder: a score per decoder head, the top
    head's cut moves the answer's log-probability, the CoRe plan keeps less KV than full attention."""
    family, folder = checkpoint
    run, cut, kv = tmp_path / "run", tmp_path / "ablate", tmp_path / "accelerate"
    scored_on = ["image", "video"] if family.video else ["image"]
    spec = data / ("both.jsonl" if family.video else "image.jsonl")
    tested = scored_on[-1]  # one sample for the commands that answer it several times (the budget)
    model = ["--model", str(folder)]

    score = ["--data", str(spec), "--batch-size", "1", "--out", str(run), "--json"]
    scored = json.loads(invoke("--quiet", "score", *model, *score).stdout)
    heads = json.loads((run / "heads.json").read_text())
    _, n_heads, n_kv, _ = family.decoder
    assert scored["n"] == heads["n_samples"] == len(scored_on) and heads["scored"]["ids"] == scored_on
    assert (heads["n_layers"], heads["n_heads"], heads["n_kv_heads"]) == (family.layers, n_heads, n_kv)
    scores = np.array(heads["scores"]["mean"])
    assert scores.shape == (family.layers, n_heads) and np.isfinite(scores).all()
    assert (scores >= 0).all() and (scores <= 1).all() and scores.max() > 0
    every = {(layer, head) for layer in range(family.layers) for head in range(n_heads)}
    assert len(heads["ranking"]) == len(every) and {tuple(h) for h in heads["ranking"]} == every
    assert heads["selected"] and heads["selected"] == heads["ranking"][: len(heads["selected"])]

    common = [*model, "--data", str(data / f"{tested}.jsonl"), "--heads", str(run), "--allow-overlap", "--json"]
    # no same-size controls: each condition answers the sample twice (greedy, then the gold answer's log-prob)
    ablation = ["--mode", "zero", "--k", "1", "--controls", "", "--out", str(cut)]
    table = json.loads(invoke("--quiet", "ablate", *common, *ablation).stdout)
    conditions = {row["condition"]: row for row in table["conditions"]}
    assert set(conditions) == {"none", "top"} and all(row["n"] == 1 for row in conditions.values())
    rows = [json.loads(line) for line in (cut / "ablation.jsonl").read_text().splitlines()]
    logp = {row["condition"]: row["answer_logprob"] for row in rows if row["id"] == tested}
    assert len(rows) == len(logp) == 2 and all(np.isfinite(v) for v in logp.values())
    assert logp["top"] != logp["none"]  # the cut head mattered

    methods = ["--prefill", "--methods", "core", "--max-new-tokens", "2", "--out", str(kv)]
    summary = json.loads(invoke("--quiet", "accelerate", *common, *methods).stdout)
    assert summary["prefill"] is True
    (core,) = summary["methods"]
    assert core["method"] == "core" and core["n"] == 1 and 0 < core["visual_kv_share"] < 1
    assert 0 < core["kv_bytes"] < core["kv_bytes_full"] and core["prefill_s"] > 0
    assert core["decode_s_per_token"] is not None  # the second answer token was decoded over the compressed cache

"""corehead's encoded inputs against transformers' own processors, family by family, with the real checkpoints.

For each of the seven families the reference is transformers' processor class (`Qwen2VLProcessor`, ...,
`InternVLProcessor`) built with the public checkpoint's settings, its real chat template and a real tokenizer:
the prompt is `processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` and the
inputs are `processor(text=..., images=..., videos=..., return_tensors="pt")`. corehead's adapter is built
from the same checkpoint files (`make_adapter(model, tokenizer, folder, ...)`, as corehead loads a checkpoint)
and `adapter.encode(sample)` must give exactly the same token ids, masks, modality types, pixels and grids.

Where a checkpoint file was not found (see fixtures/checkpoints/<family>/SOURCE.md), the published settings are
written to a temporary checkpoint folder; each such place says where the values come from and how they compare
with the class defaults. The model only lends its config to the adapter (`encode` reads nothing else): the
saved config.json where there is one, else the config class defaults, which are the published checkpoints'
(checked in `test_tokenizers_and_configs_agree_on_token_ids`).

Processors with a video slot cannot be built without torchvision, so they are built image-only (the real
`__init__`, minus the video slot). For video, a stand-in video processor (`VideoProcessor`) follows the real
one's code step by step in torch (frame sampling, resize as torchvision does on CPU, normalisation, patch
layout); the processor's own `replace_video_token` then writes the text.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import checkpoints
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from geometry_checks import probe_sample, probe_units
from PIL import Image
from transformers import (
    AddedToken,
    AutoConfig,
    AutoImageProcessor,
    AutoTokenizer,
    BatchFeature,
    InternVLConfig,
    InternVLProcessor,
    LlavaNextConfig,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
    Qwen3VLProcessor,
)
from transformers.processing_utils import ProcessorMixin
from transformers.video_utils import VideoMetadata, make_batched_metadata, make_batched_videos

from corehead.data.sample import Sample, VisualUnit
from corehead.models import internvl, llava, qwen_vl
from corehead.models.base import ChatAdapter, Encoded

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VIDEO_FAMILIES = (*QWEN, "llava_onevision", "internvl")
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ANSWER = "red"  # probe_sample's answer

# processor_config.json values the processors take as arguments (the published ones: tests/checkpoints.py)
LLAVA_PROCESSOR = {
    k: v for k, v in checkpoints.PUBLISHED["llava_next"]["processor_config.json"].items() if k != "processor_class"
}
ONEVISION_PROCESSOR = {
    k: v
    for k, v in checkpoints.PUBLISHED["llava_onevision"]["processor_config.json"].items()
    if k in ("num_image_tokens", "vision_feature_select_strategy")
}
# What each template writes after an assistant message's text (LLaVA-NeXT's "<\s>" is the template's own quirk)
END_OF_TURN = {
    **dict.fromkeys(QWEN, "<|im_end|>\n"),
    "llava": " ",
    "llava_next": "<\\s> ",
    "llava_onevision": "<|im_end|>\n",
    "internvl": "<|im_end|>\n",
}

# ----------------------------------------------------------------- tokenizers


def _tokenizer_folder(workdir: Path, name: str, config: dict[str, Any]) -> Path:
    """A tokenizer folder of the saved Qwen2 BPE files (vocab.json, merges.txt) with `config` as its
    tokenizer_config.json."""
    folder = workdir / name
    folder.mkdir()
    for file in ("vocab.json", "merges.txt"):
        shutil.copy(checkpoints.CHECKPOINTS / "tokenizers" / "qwen2_bpe" / file, folder / file)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def qwen3_vl_tokenizer(workdir: Path) -> PreTrainedTokenizerBase:
    """Qwen3-VL-8B-Instruct's tokenizer: its saved tokenizer_config.json over the Qwen2 BPE files, which are the same
    blobs in that checkpoint (vocab.json 4783fe10…, merges.txt 20024bfe…, in nikolay-grudanov/Team_5_AI_Tutor at
    8ab9ec07, models/Qwen3-VL-8B-Instruct/)."""
    config = checkpoints.settings("qwen3_vl", "tokenizer_config.json")
    assert config is not None
    return AutoTokenizer.from_pretrained(_tokenizer_folder(workdir, "qwen3_vl_tokenizer", config))


def onevision_tokenizer(workdir: Path) -> PreTrainedTokenizerBase:
    """Qwen2-7B-Instruct's tokenizer (the Qwen2 BPE with only <|endoftext|>, <|im_start|>, <|im_end|> added) plus
    <image> and <video>, added as OneVision's conversion script adds them: so <image> = 151646, <video> = 151647."""
    config = json.loads((checkpoints.CHECKPOINTS / "tokenizers" / "qwen2_bpe" / "tokenizer_config.json").read_text())
    base = {k: v for k, v in config["added_tokens_decoder"].items() if int(k) <= 151645}
    config = {**config, "added_tokens_decoder": base, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    config.pop("chat_template", None)
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(workdir, "qwen2_tokenizer", config))
    for token in ("<image>", "<video>"):
        tokenizer.add_tokens(AddedToken(token, special=True, normalized=False), special_tokens=True)
    return tokenizer


def internvl_tokenizer() -> PreTrainedTokenizerBase:
    """InternVL3's tokenizer as its conversion script writes it: Qwen2.5-VL-7B-Instruct's (= tokenizers/qwen2_bpe) with
    InternVL's named tokens and its extra special tokens (so <img> = 151665, </img> = 151666, <IMG_CONTEXT> = 151667)."""
    tokenizer = AutoTokenizer.from_pretrained(
        checkpoints.CHECKPOINTS / "tokenizers" / "qwen2_bpe",
        return_token_type_ids=False,
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    extra = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
    # the script's add_special_tokens({"additional_special_tokens": ...}, replace_additional_special_tokens=False),
    # in transformers 5's names
    tokenizer.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
    return tokenizer


def llama_tokenizer() -> PreTrainedTokenizerBase:
    """llava-hf/llava-1.5-7b-hf's own tokenizer (Llama SPM, <image> = 32000, <pad> = 32001). It also stands in for
    llava-v1.6-mistral-7b-hf's Mistral tokenizer, which was not found."""
    return AutoTokenizer.from_pretrained(checkpoints.CHECKPOINTS / "tokenizers" / "llama_llava")


# ----------------------------------------------------------------- processors


def image_only(cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`cls` without its video slot: the real `__init__` runs with video_processor=None, and since the subclass's
    signature names no video processor, ProcessorMixin neither expects nor type-checks one (that check needs
    torchvision). A stand-in video processor can be set on the instance afterwards."""

    class ImageOnly(cls):  # type: ignore[valid-type,misc]
        def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None, **kw: Any) -> None:
            cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kw)

    ImageOnly.__name__ = f"{cls.__name__}ImageOnly"
    return ImageOnly


@dataclass
class Family:
    """One family's reference processor and corehead adapter, built from the same checkpoint files."""

    name: str
    processor: Any
    adapter: ChatAdapter
    folder: Path

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer


def build(name: str, workdir: Path) -> Family:
    """The family's processor (real class, checkpoint settings, real template and tokenizer) and adapter."""
    template = checkpoints.template(name)
    folder = checkpoints.folder(name)
    if checkpoints.settings(name, "preprocessor_config.json") is None:  # not found: the published settings
        folder = workdir / name
        folder.mkdir()
        (folder / "preprocessor_config.json").write_text(
            json.dumps(checkpoints.published(name, "preprocessor_config.json"))
        )
    image_processor = AutoImageProcessor.from_pretrained(folder)
    saved = (folder / "config.json").exists()
    if name in QWEN:
        tokenizer = qwen3_vl_tokenizer(workdir) if name == "qwen3_vl" else checkpoints.qwen2_tokenizer()
        cls = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}[name]
        processor = image_only(cls)(image_processor, tokenizer, chat_template=template)
        config = AutoConfig.from_pretrained(folder) if saved else Qwen2VLConfig()
        adapter: ChatAdapter = qwen_vl.make_adapter(holder(config), tokenizer, str(folder), name, template)
    elif name in ("llava", "llava_next"):
        tokenizer = llama_tokenizer()
        llava_cls = LlavaProcessor if name == "llava" else LlavaNextProcessor
        processor = llava_cls(image_processor, tokenizer, chat_template=template, **LLAVA_PROCESSOR)
        config = AutoConfig.from_pretrained(folder) if saved else LlavaNextConfig()
        adapter = llava.make_adapter(holder(config), tokenizer, str(folder), name, template)
    elif name == "llava_onevision":
        tokenizer = onevision_tokenizer(workdir)
        cls = image_only(LlavaOnevisionProcessor)
        processor = cls(image_processor, tokenizer, chat_template=template, **ONEVISION_PROCESSOR)
        adapter = llava.make_adapter(holder(LlavaOnevisionConfig()), tokenizer, str(folder), name, template)
    else:
        tokenizer = internvl_tokenizer()
        processor = image_only(InternVLProcessor)(image_processor, tokenizer, chat_template=template)
        adapter = internvl.make_adapter(holder(InternVLConfig()), tokenizer, str(folder), name, template)
    return Family(name, processor, adapter, folder)


def holder(config: Any) -> Any:
    """The model the adapter is given: `encode` reads only its config."""
    return SimpleNamespace(config=config)


class Families:
    """Each family built on first use, once per module."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.built: dict[str, Family] = {}

    def __getitem__(self, name: str) -> Family:
        if name not in self.built:
            self.built[name] = build(name, self.workdir)
        return self.built[name]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Families:
    """The seven families, each built when a test first asks for it."""
    return Families(tmp_path_factory.mktemp("checkpoints"))


# ----------------------------------------------------------------- the stand-in video processor

# The video processors' class defaults (transformers 5.24, models/*/video_processing_*.py); a checkpoint's
# video_preprocessor_config.json, or else its preprocessor_config.json, overrides them (get_video_processor_dict).
VIDEO_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2": {  # Qwen2VLVideoProcessor, also Qwen2.5-VL's
        "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "do_sample_frames": False,
    },
    "qwen3": {  # Qwen3VLVideoProcessor
        "size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "do_sample_frames": True,
        "fps": 2,
        "min_frames": 4,
        "max_frames": 768,
    },
    "frames": {  # LlavaOnevisionVideoProcessor and InternVLVideoProcessor: every frame resized to one tile
        "size": {"height": 384, "width": 384},
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "do_sample_frames": False,
    },
}
VIDEO_KIND = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen3_vl": "qwen3", "llava_onevision": "frames"}


class VideoProcessor:
    """A family's transformers video processor (which needs torchvision), step by step in torch.

    BaseVideoProcessor.preprocess: the frames become a uint8 [T, C, H, W] tensor; frames are sampled when
    do_sample_frames (Qwen3-VL: `fps` frames a second, at least min_frames); each video is resized by
    torchvision's `resize` (bicubic, antialias; on CPU it runs torch's native uint8 `interpolate`, and returns
    the frames untouched when the size does not change); rescale and normalise are fused, (x - 255 mean) /
    (255 std) in float32; the Qwen processors then cut temporal x spatial patches (`patchify`).
    """

    rescale_factor = 1 / 255

    def __init__(self, kind: str, settings: dict[str, Any]) -> None:
        values = {**VIDEO_DEFAULTS[kind], **{k: v for k, v in settings.items() if k in VIDEO_DEFAULTS[kind]}}
        size = dict(values["size"])
        if "min_pixels" in settings:  # Qwen2VLVideoProcessor.__init__: min/max_pixels override the size
            size["shortest_edge"] = settings["min_pixels"]
        if "max_pixels" in settings:
            size["longest_edge"] = settings["max_pixels"]
        assert settings.get("resample", 3) == 3  # bicubic, the classes' default
        self.kind, self.size = kind, size
        self.mean, self.std = values["image_mean"], values["image_std"]
        self.patch_size = values.get("patch_size", 0)
        self.temporal_patch_size = values.get("temporal_patch_size", 1)
        self.merge_size = values.get("merge_size", 1)
        self.do_sample_frames = bool(values["do_sample_frames"])
        self.fps = float(values.get("fps", 0))  # frames a second sampled (Qwen3-VL)
        self.min_frames, self.max_frames = int(values.get("min_frames", 1)), int(values.get("max_frames", 1))

    @classmethod
    def of(cls, family: Family) -> VideoProcessor:
        """The family's video processor with its checkpoint's settings."""
        own = family.folder / "video_preprocessor_config.json"
        file = own if own.exists() else family.folder / "preprocessor_config.json"
        return cls(VIDEO_KIND.get(family.name, "frames"), json.loads(file.read_text()))

    def __call__(
        self,
        videos: Any,
        video_metadata: Any = None,
        return_metadata: bool = False,
        return_tensors: str | None = None,
        **_: Any,
    ) -> BatchFeature:
        videos = make_batched_videos(videos)
        metadata = make_batched_metadata(videos, video_metadata)
        pixels, grids = [], []
        for video, meta in zip(videos, metadata, strict=True):
            if self.do_sample_frames:
                meta.frames_indices = self.sample_frames(meta)  # type: ignore[assignment]  # an array, as there
                video = video[meta.frames_indices]
            frames = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).contiguous()
            height, width = self.resized(*frames.shape[:1], *frames.shape[2:])
            if (height, width) != tuple(frames.shape[2:]):
                frames = F.interpolate(
                    frames, size=[height, width], mode="bicubic", align_corners=False, antialias=True
                )
            mean = torch.tensor(self.mean) * (1.0 / self.rescale_factor)
            std = torch.tensor(self.std) * (1.0 / self.rescale_factor)
            frames = frames.to(torch.float32).sub(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
            if self.kind == "frames":
                pixels.append(frames)
                continue
            patches, grid = self.patchify(frames)
            pixels.append(patches)
            grids.append(grid)
        data: dict[str, Any] = {"pixel_values_videos": pixels}
        if grids:
            data = {"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids)}
        out = BatchFeature(data=data, tensor_type=return_tensors)
        if return_metadata:
            out["video_metadata"] = metadata
        return out

    def sample_frames(self, meta: VideoMetadata) -> np.ndarray:
        """Qwen3VLVideoProcessor.sample_frames: `fps` frames a second, clamped to [min_frames, all frames]."""
        total = int(meta.total_num_frames)
        count = int(total / float(meta.fps or 24) * self.fps)
        count = min(max(count, self.min_frames), self.max_frames, total)
        return np.linspace(0, total - 1, count).round().astype(int)

    def resized(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """The frames' size after resizing: Qwen's smart_resize (Qwen3-VL's budget counts every frame), else one tile."""
        if self.kind == "frames":
            return int(self.size["height"]), int(self.size["width"])
        factor = self.patch_size * self.merge_size
        low, high = int(self.size["shortest_edge"]), int(self.size["longest_edge"])
        if self.kind == "qwen3":
            if height < factor or width < factor:
                scale = max(factor / height, factor / width)
                height, width = int(height * scale), int(width * scale)
            t_bar = round(frames / self.temporal_patch_size) * self.temporal_patch_size
        else:
            t_bar = frames = 1  # Qwen2VLVideoProcessor: the budget is per frame
        h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
        if t_bar * h_bar * w_bar > high:
            beta = math.sqrt(frames * height * width / high)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif t_bar * h_bar * w_bar < low:
            beta = math.sqrt(low / (frames * height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar

    def patchify(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Qwen's patch layout: [t * h * w, C * temporal * patch * patch], the last frame repeated to fill a pair."""
        videos = frames[None]
        if pad := -videos.shape[1] % self.temporal_patch_size:
            videos = torch.cat((videos, videos[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
        _, count, channel, height, width = videos.shape
        p, m, tp = self.patch_size, self.merge_size, self.temporal_patch_size
        t, h, w = count // tp, height // p, width // p
        patches = videos.view(1, t, tp, channel, h // m, m, p, w // m, m, p).permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
        return patches.reshape(t * h * w, channel * tp * p * p), [t, h, w]


# ----------------------------------------------------------------- samples and the reference


def noise(width: int, height: int, seed: int) -> Image.Image:
    """Random pixels: every resampling difference shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_sample(sizes: list[tuple[int, int]], kind: str = "image") -> Sample:
    """Random images (or pages) of `sizes` (width, height), in order."""
    images = [noise(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    return probe_sample(probe_units([(kind, w, h) for w, h in sizes], images))


def video_sample(width: int, height: int, frames: int, fps: float = 1.0) -> Sample:
    """One video: `frames` frames, `fps` frames a second from 0 s."""
    units = [
        VisualUnit("frame", f"f{i}", width, height, frame=i, timestamp=i / fps, image=noise(width, height, 10 + i))
        for i in range(frames)
    ]
    return probe_sample(units)


def runs(units: list[VisualUnit]) -> Iterator[list[VisualUnit]]:
    """Each image or page alone, each run of consecutive frames as one video."""
    run: list[VisualUnit] = []
    for unit in units:
        if run and not (unit.kind == "frame" and run[-1].kind == "frame"):
            yield run
            run = []
        run.append(unit)
    if run:
        yield run


def reference(family: Family, sample: Sample, answer: bool = False) -> tuple[BatchFeature, str]:
    """The processor's inputs for `sample` (with `answer`, after the generation prompt) and its rendered prompt."""
    content: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    videos: list[list[Image.Image]] = []
    metadata = []
    for run in runs(sample.units):
        if run[0].kind != "frame":
            content.append({"type": "image"})
            images.append(run[0].load())
            continue
        content.append({"type": "video"})
        videos.append([unit.load() for unit in run])
        stamps = [float(unit.timestamp or 0.0) for unit in run]
        fps = (len(run) - 1) / (stamps[-1] - stamps[0]) if len(run) > 1 else 1.0
        width, height = run[0].width, run[0].height
        metadata.append(
            VideoMetadata(len(run), fps, width, height, len(run) / fps, frames_indices=list(range(len(run))))
        )
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": sample.question}]}]
    prompt = family.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = prompt
    if answer:
        turn = {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}
        full = family.processor.apply_chat_template([*messages, turn], tokenize=False)
        assert full.startswith(prompt)
        lead, found, end = full[len(prompt) :].partition(sample.answer)
        assert found and end == END_OF_TURN[family.name]
        # the turn ends at its end token, not at the whitespace before the next turn; a template that writes none
        # (LLaVA-1.5's) ends it with the EOS token, as corehead documents (TemplateChat.end)
        text = prompt + lead + sample.answer + (end.rstrip() or family.tokenizer.eos_token)
    # the images of one prompt, nested as for a batch of prompts (OneVision counts a prompt's images by it)
    kwargs: dict[str, Any] = {"images": [images] if images else None}
    if videos:
        kwargs.update(videos=videos, video_metadata=metadata)
    return family.processor(text=text, return_tensors="pt", **kwargs), prompt


# ----------------------------------------------------------------- comparison

PIXELS = ("pixel_values", "pixel_values_videos")


def first_difference(expected: list[int], got: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """Where two token id lists part, with the tokens around that position."""
    k = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))

    def around(ids: list[int]) -> list[str]:
        return list(tokenizer.convert_ids_to_tokens(ids[max(0, k - 6) : k + 6]))

    return (
        f"{len(expected)} tokens (processor) vs {len(got)} (corehead); first difference at {k}: "
        f"processor {around(expected)} vs corehead {around(got)}"
    )


def assert_same(
    family: Family, expected: BatchFeature, enc: Encoded, skip: tuple[str, ...] = (), atol: float = 0.0
) -> None:
    """`enc.inputs` equals the processor's `expected` key for key, except `skip`; pixels within `atol`."""
    assert set(enc.inputs) == set(expected), f"keys: processor {sorted(expected)} vs corehead {sorted(enc.inputs)}"
    ids, got = expected["input_ids"][0].tolist(), enc.inputs["input_ids"][0].tolist()
    assert ids == got, first_difference(ids, got, family.tokenizer)
    for key, value in expected.items():
        if key in skip:
            continue
        mine = enc.inputs[key]
        assert mine.dtype == value.dtype and mine.shape == value.shape, (key, mine.dtype, mine.shape, value.shape)
        if key in PIXELS and atol:
            diff = (mine - value).abs()
            assert diff.max() <= atol, (
                f"{key}: {int((diff > atol).sum())} of {diff.numel()} values differ by more than {atol} "
                f"(largest {float(diff.max()):.4f})"
            )
        else:
            assert torch.equal(mine, value), f"{key} differs"


# ----------------------------------------------------------------- tests


# The placeholder tokens the adapters' configs name, and their ids in the published checkpoints
CONFIG_TOKENS: dict[str, dict[str, tuple[str, int]]] = {
    **{
        name: {
            "image_token_id": ("<|image_pad|>", 151655),
            "video_token_id": ("<|video_pad|>", 151656),
            "vision_start_token_id": ("<|vision_start|>", 151652),
            "vision_end_token_id": ("<|vision_end|>", 151653),
        }
        for name in QWEN
    },
    "llava": {"image_token_id": ("<image>", 32000)},
    "llava_next": {"image_token_id": ("<image>", 32000)},
    "llava_onevision": {"image_token_id": ("<image>", 151646), "video_token_id": ("<video>", 151647)},
    "internvl": {"image_token_id": ("<IMG_CONTEXT>", 151667)},
}


@pytest.mark.parametrize("name", checkpoints.FAMILIES)
def test_tokenizers_and_configs_agree_on_token_ids(families: Families, name: str) -> None:
    """The tokenizers built here give the placeholder tokens the published ids, which the configs name."""
    family = families[name]
    config = family.adapter.model.config
    for attribute, (token, number) in CONFIG_TOKENS[name].items():
        assert family.tokenizer.convert_tokens_to_ids(token) == number == getattr(config, attribute), (attribute, token)
    if name == "internvl":
        assert family.tokenizer.convert_tokens_to_ids(["<img>", "</img>"]) == [151665, 151666]


def test_published_settings() -> None:
    """Qwen2-VL's published preprocessor settings are the saved Qwen2.5-VL ones; llava-v1.6's processor settings
    are the saved LLaVA-1.5 ones."""
    saved = checkpoints.settings("qwen2_5_vl", "preprocessor_config.json")
    assert saved == {**checkpoints.QWEN2_VL_PREPROCESSOR, "processor_class": "Qwen2_5_VLProcessor"}
    processor = checkpoints.settings("llava", "processor_config.json")
    assert processor == {**LLAVA_PROCESSOR, "image_token": "<image>", "processor_class": "LlavaProcessor"}


@pytest.mark.parametrize("name", checkpoints.FAMILIES)
def test_one_image(families: Families, name: str) -> None:
    """One 400x300 image; Qwen2-VL and Qwen2.5-VL's templates open with their default system turn."""
    family = families[name]
    sample = image_sample([(400, 300)])
    expected, prompt = reference(family, sample)
    assert_same(family, expected, family.adapter.encode(sample))
    if name in ("qwen2_vl", "qwen2_5_vl"):  # the template's default system turn
        assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


@pytest.mark.parametrize("name", checkpoints.FAMILIES)
def test_pages_of_different_sizes(families: Families, name: str) -> None:
    """Three pages of different sizes in one prompt (OneVision: a square base grid each)."""
    family = families[name]
    sample = image_sample([(300, 400), (520, 200), (256, 256)], kind="page")
    expected, _ = reference(family, sample)
    assert_same(family, expected, family.adapter.encode(sample))


@pytest.mark.parametrize("size", [(333, 517), (1000, 37)], ids=["333x517", "1000x37"])
@pytest.mark.parametrize("name", checkpoints.FAMILIES)
def test_odd_sizes(families: Families, name: str, size: tuple[int, int]) -> None:
    """Sizes that fit no grid: odd sides, and a 27:1 strip."""
    family = families[name]
    sample = image_sample([size])
    expected, _ = reference(family, sample)
    assert_same(family, expected, family.adapter.encode(sample))


@pytest.mark.parametrize("name", checkpoints.FAMILIES)
def test_with_the_answer(families: Families, name: str) -> None:
    """encode(answer=True): the generation prompt, the answer and the template's end of turn."""
    family = families[name]
    sample = image_sample([(333, 517)])
    expected, _ = reference(family, sample, answer=True)
    enc = family.adapter.encode(sample, answer=True)
    assert_same(family, expected, enc)
    assert str(family.tokenizer.decode(enc.inputs["input_ids"][0][enc.answer])).strip() == ANSWER


# Video: 4 frames at 1 fps, either already at the size the video processor resizes them to (no resampling, so
# every value must match) or 320x240 (resized on both sides). For Qwen3-VL, two more cases where its video
# processor's own settings matter: 160x120 frames (its video_preprocessor_config.json bounds the whole clip's pixels
# from 4096, where the image processor would give each frame at least 65536: 8x10 patches a frame against 14x20)
# and 8 frames at 4 fps (it samples 2 frames a second, so 4 of the 8).
NATIVE = {"qwen2_vl": (308, 252), "qwen2_5_vl": (308, 252), "qwen3_vl": (320, 256)}
NATIVE |= {"llava_onevision": (384, 384), "internvl": (448, 448)}
VIDEO_PIXELS = [(name, case) for name in VIDEO_FAMILIES for case in ("native", "320x240")]
VIDEOS = [*VIDEO_PIXELS, ("qwen2_5_vl", "8-frames-at-4fps"), ("qwen3_vl", "160x120"), ("qwen3_vl", "8-frames-at-4fps")]


def video_case(name: str, case: str) -> Sample:
    """The video of a case of VIDEOS."""
    if case == "native":
        return video_sample(*NATIVE[name], frames=4)
    if case == "8-frames-at-4fps":
        return video_sample(320, 240, frames=8, fps=4.0)
    width, height = (int(v) for v in case.split("x"))
    return video_sample(width, height, frames=4)


def video_family(families: Families, name: str) -> Family:
    """The family, its processor given the stand-in video processor."""
    family = families[name]
    family.processor.video_processor = VideoProcessor.of(family)
    return family


@pytest.mark.parametrize(("name", "case"), VIDEOS)
def test_video_prompt(families: Families, name: str, case: str) -> None:
    """Token ids, masks, modality types, grids and timing; pixels are compared in test_video_pixels."""
    family = video_family(families, name)
    sample = video_case(name, case)
    expected, _ = reference(family, sample)
    assert_same(family, expected, family.adapter.encode(sample), skip=PIXELS)


@pytest.mark.parametrize(("name", "case"), VIDEO_PIXELS)
def test_video_pixels(families: Families, name: str, case: str) -> None:
    """The frames' pixel values, to float32 rounding: corehead normalises with numpy and the video processor with
    fused torch arithmetic (differences up to ~3e-7), while one grey level of resampling moves a value by at least
    1 / 255 / 0.5 = 0.0078."""
    family = video_family(families, name)
    sample = video_case(name, case)
    expected, _ = reference(family, sample)
    assert_same(family, expected, family.adapter.encode(sample), atol=1e-4)


@pytest.mark.parametrize("order", ["image-video", "video-image"])
@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_image_and_video(families: Families, name: str, order: str) -> None:
    """An image and a 2-frame video in one prompt, in either order (LLaVA-OneVision's template writes every image
    placeholder before the videos' ones, whatever the order of the content items)."""
    family = video_family(families, name)
    video = video_sample(*NATIVE[name], frames=2).units
    image = image_sample([(400, 300)]).units
    sample = probe_sample(image + video if order == "image-video" else video + image)
    expected, _ = reference(family, sample)
    assert_same(family, expected, family.adapter.encode(sample), atol=1e-4)

"""Qwen-VL family adapter (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, and the built-in model, which is a Qwen3-VL).

Geometry: each image is resized to multiples of patch*merge pixels (28 px for Qwen2/2.5, 32 px for
Qwen3), cut into patch x patch squares in (rows/merge, cols/merge, merge, merge) order, and every merge x
merge block becomes one decoder token. Video frames go in pairs (temporal patch 2): one token covers
the same cell of two consecutive frames. Qwen3-VL writes a text timestamp "<t seconds>" before each
pair; Qwen2/2.5 put the whole video in one block.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as clip_resize
from transformers.utils import cached_file

from corehead.data.sample import VisualUnit
from corehead.models.base import Assembled, ChatAdapter, Expansion, resize_frames, unit_groups
from corehead.models.chat import CHATML

__all__ = ["QWEN2_FALLBACK", "QWEN3_FALLBACK", "QwenVLAdapter", "make_adapter"]

IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"
# The hand-written formats, as the public checkpoints' templates write a one-turn prompt: Qwen2-VL and
# Qwen2.5-VL open with a default system turn; Qwen3-VL has none.
QWEN3_FALLBACK = replace(
    CHATML, image=f"<|vision_start|>{IMAGE}<|vision_end|>", video=f"<|vision_start|>{VIDEO}<|vision_end|>"
)
QWEN2_FALLBACK = replace(QWEN3_FALLBACK, default_system="You are a helpful assistant.")


class QwenVLAdapter(ChatAdapter):
    """Encodes samples for a Qwen-VL model exactly as its processor would, and knows each token's pixels."""

    with_mm_types = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        name: str,
        template: str | None = None,
        video: dict[str, Any] | None = None,
    ) -> None:
        self.fallback = QWEN3_FALLBACK if model.config.model_type == "qwen3_vl" else QWEN2_FALLBACK
        super().__init__(model, tokenizer, name, template)
        self.image_processor = image_processor
        self.video = video  # the checkpoint's own video processor settings (video_settings), where it has them
        self.placeholders = {"image": IMAGE, "video": VIDEO}
        vision = model.config.vision_config
        self.patch = int(vision.patch_size)
        self.merge = int(vision.spatial_merge_size)
        self.temporal = int(vision.temporal_patch_size)
        self.timestamps = self.family == "qwen3_vl"
        tok = tokenizer.convert_tokens_to_ids
        self.image_token = int(tok(IMAGE))
        self.video_token = int(tok(VIDEO))
        self.vision_start = "<|vision_start|>"
        self.vision_end = "<|vision_end|>"
        self.wrappers = {int(tok(self.vision_start)), int(tok(self.vision_end))}

    def modality_tokens(self) -> dict[int, int]:
        return {self.image_token: 1, self.video_token: 2}

    def cap_pixels(self, max_pixels: int) -> None:
        self.image_processor.size["longest_edge"] = max_pixels
        self.image_processor.size["shortest_edge"] = min(self.image_processor.size["shortest_edge"], max_pixels)

    def seen_size(self, unit: VisualUnit) -> tuple[int, int]:
        size = self.image_processor.size
        factor = self.patch * self.merge
        height, width = smart_resize(unit.height, unit.width, factor, size["shortest_edge"], size["longest_edge"])
        return width, height

    def expand(self, out: Assembled, units: list[VisualUnit]) -> list[Expansion]:
        return [
            self._video(out, units, group) if units[group[0]].kind == "frame" else self._image(out, units, group[0])
            for group in unit_groups(units)
        ]

    def _frame_size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) the video processor resizes a clip's frames to: within its own pixel bounds where the
        checkpoint has a video config (Qwen3-VL bounds the whole clip, Qwen2-VL each frame), else the image's."""
        factor = self.patch * self.merge
        bounds = self.video or self.image_processor.size
        low, high = int(bounds["shortest_edge"]), int(bounds["longest_edge"])
        if self.timestamps and self.video:
            return clip_resize(max(frames, self.temporal), height, width, self.temporal, factor, low, high)
        return smart_resize(height, width, factor, low, high)

    def sample_frames(self, frames: list[VisualUnit]) -> list[int]:
        """Qwen3-VL's video processor keeps `fps` frames a second (at least min_frames, at most max_frames)."""
        video = self.video
        if not (self.timestamps and video and video["do_sample_frames"]):
            return list(range(len(frames)))
        total = len(frames)
        count = int(total / _fps(frames, list(range(total))) * video["fps"])
        count = min(max(count, video["min_frames"]), video["max_frames"], total)
        return [int(i) for i in np.linspace(0, total - 1, count).round()]

    def _pixels(self, frames: list[Any], size: tuple[int, int] | None = None) -> tuple[np.ndarray, int, int]:
        """Patches of each frame (processor layout) and the patch grid (rows, cols); a video's frames come
        resized to `size` as the video processor resizes them."""
        if size is not None:
            frames = resize_frames(frames, *size)
        feats = self.image_processor(images=frames, do_resize=size is None, return_tensors="np")
        grid = feats["image_grid_thw"]
        return feats["pixel_values"], int(grid[0][1]), int(grid[0][2])

    def _cells(self, unit: VisualUnit, rows: int, cols: int) -> np.ndarray:
        """Pixel cell of each merged token of a (rows x cols patch) grid, in the unit's own pixels."""
        step = self.patch * self.merge
        r, c = np.divmod(np.arange((rows // self.merge) * (cols // self.merge)), cols // self.merge)
        sx, sy = unit.width / (cols * self.patch), unit.height / (rows * self.patch)
        return np.stack([c * step * sx, r * step * sy, (c + 1) * step * sx, (r + 1) * step * sy], axis=1)

    def _image(self, out: Assembled, units: list[VisualUnit], index: int) -> Expansion:
        """<|image_pad|> once per merged cell (Qwen2VLProcessor.replace_image_token)."""
        unit = units[index]
        patches, rows, cols = self._pixels([unit.load()])
        cells = self._cells(unit, rows, cols)
        out.add_pixels("pixel_values", torch.from_numpy(patches))
        out.add_pixels("image_grid_thw", torch.tensor([[1, rows, cols]]))
        n = len(cells)
        return Expansion(
            "image", IMAGE * n, self.image_token, n, np.arange(n), np.full(n, index), np.ones(n, int), cells
        )

    def _video(self, out: Assembled, units: list[VisualUnit], group: list[int]) -> Expansion:
        """<|video_pad|> per cell and temporal patch; Qwen3-VL writes each temporal patch as its own block after
        its timestamp (Qwen3VLProcessor.replace_video_token)."""
        frames = [units[i].load() for i in group]
        sizes = {f.size for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"frames of one video differ in size: {sorted(sizes)}")
        patches, rows, cols = self._pixels(frames, self._frame_size(len(frames), frames[0].height, frames[0].width))
        per_frame = patches.reshape(len(frames), -1, 3, self.temporal, self.patch, self.patch)[:, :, :, 0]
        pad = -len(frames) % self.temporal
        if pad:  # like the processor: repeat the last frame to fill the last temporal patch
            per_frame = np.concatenate([per_frame, np.repeat(per_frame[-1:], pad, axis=0)])
        t = per_frame.shape[0] // self.temporal
        grouped = per_frame.reshape(t, self.temporal, *per_frame.shape[1:]).transpose(0, 2, 3, 1, 4, 5)
        out.add_pixels("pixel_values_videos", torch.from_numpy(grouped.reshape(t * grouped.shape[1], -1)))
        out.add_pixels("video_grid_thw", torch.tensor([[t, rows, cols]]))
        cells = self._cells(units[group[0]], rows, cols)
        n = len(cells)
        text, firsts, spans = "", [], []
        for k in range(t):
            first = k * self.temporal
            span = min(self.temporal, len(group) - first)
            if self.timestamps:
                stamps = [units[group[first + j]].timestamp or 0.0 for j in range(span)]
                text += f"<{sum(stamps) / len(stamps):.1f} seconds>{self.vision_start}{VIDEO * n}{self.vision_end}"
            firsts.append(np.full(n, group[first]))
            spans.append(np.full(n, span))
        if not self.timestamps:
            text = VIDEO * (n * t)
            if self.family == "qwen2_5_vl":  # its temporal positions advance with real time
                out.add_pixels("second_per_grid_ts", torch.tensor([self.temporal / _fps(units, group)]))
        count = n * t
        return Expansion(
            "video",
            text,
            self.video_token,
            count,
            np.arange(count),
            np.concatenate(firsts),
            np.concatenate(spans),
            np.tile(cells, (t, 1)),
        )


def _fps(units: list[VisualUnit], group: list[int]) -> float:
    stamps = [units[i].timestamp for i in group]
    if len(group) < 2 or any(s is None for s in stamps):
        return 1.0
    span = float(stamps[-1]) - float(stamps[0])  # type: ignore[arg-type]
    return (len(group) - 1) / span if span > 0 else 1.0


def video_settings(path: str) -> dict[str, Any] | None:
    """The checkpoint's video processor settings (video_preprocessor_config.json) that decide which frames are
    kept and how they are resized; None when it has none (the video processor then takes the image settings)."""
    file = cached_file(path, "video_preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if file is None:
        return None
    stored = json.loads(Path(file).read_text())
    if stored.get("cap_pixels_per_frame"):
        raise ValueError(f"{path}: cap_pixels_per_frame in its video processor settings is not supported yet")
    size = stored.get("size") or {"shortest_edge": stored["min_pixels"], "longest_edge": stored["max_pixels"]}
    # Qwen3VLVideoProcessor's defaults for what the file leaves out
    sampling = {"do_sample_frames": True, "fps": 2, "min_frames": 4, "max_frames": 768}
    return {**size, **{key: stored.get(key, value) for key, value in sampling.items()}}


def make_adapter(model: Any, tokenizer: Any, path: str, name: str, template: str | None = None) -> QwenVLAdapter:
    """The adapter for a loaded Qwen-VL checkpoint; its image and video processor settings come from `path`."""
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    return QwenVLAdapter(model, tokenizer, image_processor, name, template, video_settings(path))

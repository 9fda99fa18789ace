"""Qwen-VL family adapter (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, and the built-in model, which is a Qwen3-VL).

Geometry: each image is resized to multiples of patch*merge pixels (28 px for Qwen2/2.5, 32 px for
Qwen3), cut into patch x patch squares in (rows/merge, cols/merge, merge, merge) order, and every merge x
merge block becomes one decoder token. Video frames go in pairs (temporal patch 2): one token covers
the same cell of two consecutive frames. Qwen3-VL writes a text timestamp "<t seconds>" before each
pair; Qwen2/2.5 put the whole video in one block.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from corehead.data.sample import VisualUnit
from corehead.models.base import Assembled, ChatAdapter, Expansion, unit_groups
from corehead.models.chat import ChatFormat

__all__ = ["QWEN2_FALLBACK", "QWEN3_FALLBACK", "QwenVLAdapter", "make_adapter"]

IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"
# The hand-written formats, as the public checkpoints' templates write a one-turn prompt: Qwen2-VL and
# Qwen2.5-VL open with a default system turn; Qwen3-VL has none.
QWEN3_FALLBACK = ChatFormat(
    user="<|im_start|>user\n",
    assistant="<|im_end|>\n<|im_start|>assistant\n",
    end="<|im_end|>",
    image=f"<|vision_start|>{IMAGE}<|vision_end|>",
    video=f"<|vision_start|>{VIDEO}<|vision_end|>",
    system="<|im_start|>system\n{}<|im_end|>\n",
)
QWEN2_FALLBACK = replace(QWEN3_FALLBACK, default_system="You are a helpful assistant.")


class QwenVLAdapter(ChatAdapter):
    """Encodes samples for a Qwen-VL model exactly as its processor would, and knows each token's pixels."""

    with_mm_types = True
    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, name: str, template: str | None = None
    ) -> None:
        self.fallback = QWEN3_FALLBACK if model.config.model_type == "qwen3_vl" else QWEN2_FALLBACK
        super().__init__(model, tokenizer, name, template)
        self.image_processor = image_processor
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

    def _pixels(self, frames: list[Any]) -> tuple[np.ndarray, int, int]:
        """Patches of each frame (processor layout) and the patch grid (rows, cols)."""
        feats = self.image_processor(images=frames, return_tensors="np")
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
        patches, rows, cols = self._pixels(frames)
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


def make_adapter(model: Any, tokenizer: Any, path: str, name: str, template: str | None = None) -> QwenVLAdapter:
    """The adapter for a loaded Qwen-VL checkpoint; its image processor settings come from `path`."""
    return QwenVLAdapter(model, tokenizer, Qwen2VLImageProcessorPil.from_pretrained(path), name, template)

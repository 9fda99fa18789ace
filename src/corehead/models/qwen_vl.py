"""Qwen-VL family adapter (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, and the built-in model, which is a Qwen3-VL).

Geometry: each image is resized to multiples of patch*merge pixels (28 px for Qwen2/2.5, 32 px for
Qwen3), cut into patch x patch squares in (rows/merge, cols/merge, merge, merge) order, and every merge x
merge block becomes one decoder token. Video frames go in pairs (temporal patch 2): one token covers
the same cell of two consecutive frames. Qwen3-VL writes a text timestamp "<t seconds>" before each
pair; Qwen2/2.5 put the whole video in one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from corehead.data.sample import Sample, VisualUnit
from corehead.models.base import Encoded, VisualTokenMap

USER = "<|im_start|>user\n"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"

# One element of a token sequence: a tag saying what the text is (question, prompt, answer, end, text)
Piece = tuple[str, str]


@dataclass
class Assembled:
    """A token sequence with per-token tags, its pixel inputs and the visual token map."""

    ids: list[int]
    tags: list[str]
    mm_types: list[int]
    pixels: dict[str, list[torch.Tensor]]
    token_map: VisualTokenMap

    def encoded(self) -> Encoded:
        tags = np.array(self.tags)
        inputs: dict[str, torch.Tensor] = {
            "input_ids": torch.tensor([self.ids]),
            "attention_mask": torch.ones(1, len(self.ids), dtype=torch.long),
            "mm_token_type_ids": torch.tensor([self.mm_types]),
        }
        inputs.update({k: torch.cat(v) for k, v in self.pixels.items() if v})
        prompt = np.flatnonzero(tags == "prompt")
        return Encoded(
            inputs=inputs,
            token_map=self.token_map,
            question=np.flatnonzero(tags == "question"),
            prompt_end=int(prompt[-1]) if len(prompt) else len(self.ids) - 1,
            answer=np.flatnonzero(tags == "answer"),
        )


class QwenVLAdapter:
    """Encodes samples for a Qwen-VL model exactly as its processor would, and knows each token's pixels."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.name = name
        self.family = model.config.model_type
        vision = model.config.vision_config
        self.patch = int(vision.patch_size)
        self.merge = int(vision.spatial_merge_size)
        self.temporal = int(vision.temporal_patch_size)
        self.timestamps = self.family == "qwen3_vl"
        tok = tokenizer.convert_tokens_to_ids
        self.image_token = tok("<|image_pad|>")
        self.video_token = tok("<|video_pad|>")
        self.vision_start = tok("<|vision_start|>")
        self.vision_end = tok("<|vision_end|>")
        self.end_token = tok(END)
        self.pad_token = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_token

    # ------------------------------------------------------------------------------------ encoding

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, sample: Sample, answer: bool = False) -> Encoded:
        pieces: list[Piece] = [("question", sample.question), ("prompt", ASSISTANT)]
        if answer:
            pieces += [("answer", sample.answer), ("end", END)]
        return self.assemble(sample.units, USER, pieces).encoded()

    def assemble(self, units: list[VisualUnit], prefix: str, pieces: list[Piece]) -> Assembled:
        """prefix text, then the visual units, then the tagged text pieces, tokenized piece by piece."""
        out = Assembled([], [], [], {}, VisualTokenMap(*_empty_map()))
        self._add_text(out, "prompt", prefix)
        maps = []
        for group in _unit_groups(units):
            maps.append(
                self._add_video(out, units, group)
                if len(group) > 1 or units[group[0]].kind == "frame"
                else self._add_image(out, units, group[0])
            )
        out.token_map = VisualTokenMap(*(np.concatenate(parts) for parts in zip(*maps, strict=True)))
        for tag, text in pieces:
            self._add_text(out, tag, text)
        return out

    def _add_text(self, out: Assembled, tag: str, text: str) -> None:
        ids = self.text_ids(text)
        out.ids += ids
        out.tags += [tag] * len(ids)
        out.mm_types += [0] * len(ids)

    def _add_tokens(self, out: Assembled, token: int, count: int, mm_type: int) -> np.ndarray:
        out.ids.append(self.vision_start)
        start = len(out.ids)
        out.ids += [token] * count + [self.vision_end]
        out.tags += ["vision"] * (count + 2)
        out.mm_types += [0] + [mm_type] * count + [0]
        return np.arange(start, start + count)

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

    def _add_image(self, out: Assembled, units: list[VisualUnit], index: int) -> tuple[np.ndarray, ...]:
        unit = units[index]
        patches, rows, cols = self._pixels([unit.load()])
        cells = self._cells(unit, rows, cols)
        positions = self._add_tokens(out, self.image_token, len(cells), 1)
        out.pixels.setdefault("pixel_values", []).append(torch.from_numpy(patches))
        out.pixels.setdefault("image_grid_thw", []).append(torch.tensor([[1, rows, cols]]))
        n = len(cells)
        return positions, np.full(n, index), np.ones(n, dtype=np.int64), cells

    def _add_video(self, out: Assembled, units: list[VisualUnit], group: list[int]) -> tuple[np.ndarray, ...]:
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
        out.pixels.setdefault("pixel_values_videos", []).append(
            torch.from_numpy(grouped.reshape(t * grouped.shape[1], -1))
        )
        out.pixels.setdefault("video_grid_thw", []).append(torch.tensor([[t, rows, cols]]))
        cells = self._cells(units[group[0]], rows, cols)
        n = len(cells)
        positions, firsts, spans = [], [], []
        for k in range(t):
            first = k * self.temporal
            span = min(self.temporal, len(group) - first)
            if self.timestamps:
                stamps = [units[group[first + j]].timestamp or 0.0 for j in range(span)]
                self._add_text(out, "vision", f"<{sum(stamps) / len(stamps):.1f} seconds>")
                positions.append(self._add_tokens(out, self.video_token, n, 2))
            firsts.append(np.full(n, group[first]))
            spans.append(np.full(n, span))
        if not self.timestamps:
            positions = [self._add_tokens(out, self.video_token, n * t, 2)]
            if self.family == "qwen2_5_vl":  # its temporal positions advance with real time
                fps = _fps(units, group)
                out.pixels.setdefault("second_per_grid_ts", []).append(torch.tensor([self.temporal / fps]))
        return (
            np.concatenate(positions),
            np.concatenate(firsts),
            np.concatenate(spans),
            np.tile(cells, (t, 1)),
        )

    # ------------------------------------------------------------------------------------ batching

    def collate(self, encoded: list[Encoded]) -> dict[str, torch.Tensor]:
        """Left-pad a list of encoded samples into one batch (pixels concatenated in sample order)."""
        width = max(e.length for e in encoded)
        batch: dict[str, list[torch.Tensor]] = {}
        for e in encoded:
            pad = width - e.length
            for key, value in e.inputs.items():
                if key in ("input_ids", "attention_mask", "mm_token_type_ids"):
                    fill = self.pad_token if key == "input_ids" else 0
                    value = torch.cat([torch.full((1, pad), fill, dtype=value.dtype), value], dim=1)
                batch.setdefault(key, []).append(value)
        return {k: torch.cat(v) for k, v in batch.items()}

    @torch.no_grad()
    def generate(self, samples: list[Sample], max_new_tokens: int = 16) -> list[str]:
        encoded = [self.encode(s) for s in samples]
        batch = {k: v.to(self.model.device) for k, v in self.collate(encoded).items()}
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.end_token,
            pad_token_id=self.pad_token,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _empty_map() -> tuple[np.ndarray, ...]:
    zeros = np.zeros(0, dtype=np.int64)
    return zeros, zeros, zeros, np.zeros((0, 4))


def _unit_groups(units: list[VisualUnit]) -> list[list[int]]:
    """Each image or page alone; each run of consecutive frames as one video."""
    groups: list[list[int]] = []
    for i, unit in enumerate(units):
        if unit.kind == "frame" and groups and units[groups[-1][-1]].kind == "frame":
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _fps(units: list[VisualUnit], group: list[int]) -> float:
    stamps = [units[i].timestamp for i in group]
    if len(group) < 2 or any(s is None for s in stamps):
        return 1.0
    span = float(stamps[-1]) - float(stamps[0])  # type: ignore[arg-type]
    return (len(group) - 1) / span if span > 0 else 1.0

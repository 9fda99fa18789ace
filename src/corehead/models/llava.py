"""LLaVA family adapters (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision), with each visual token's exact pixels.

Geometry follows transformers' processors and modeling code. A grid position is one ViT patch of `patch`
px; a tile of `tile` px holds tile // patch patches per side (any rest of the tile feeds no token).
- LLaVA-1.5 (`LlavaImageProcessor`): optional pad to a square, resize (shortest edge), centre crop; one
  token per patch of the crop, row-major. Tokens cover only the cropped part of the image.
- LLaVA-NeXT (anyres, `pack_image_features`): the base image squashed to one tile, one token per patch;
  then the image resized into the best grid resolution (`select_best_resolution`), centred on a zero-padded
  canvas and cut into tiles whose patches form one grid; rows or columns of padding are cut
  (`unpad_image`) and an image_newline token ends each remaining row.
- LLaVA-OneVision: as NeXT, but a grid above anyres_max_N tiles' worth of patches is shrunk bilinearly
  (each token then covers its footprint); with several images in a prompt, each is padded to a square and
  gives one base grid and one newline; a video's frames are squashed to one tile and pooled 2x2 (bilinear,
  rounding up), and one newline follows the whole video.
Newline tokens, and tokens that see only padding, cover no pixel of the unit: the map leaves them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_next.modeling_llava_next import unpad_image
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

from corehead.data.sample import VisualUnit
from corehead.models import chat
from corehead.models.base import Assembled, ChatAdapter, Expansion, resize_frames, unit_groups
from corehead.models.chat import ChatFormat

__all__ = [
    "ADAPTERS",
    "CHATML",
    "LLAMA3",
    "MISTRAL",
    "ONEVISION",
    "VICUNA",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "make_adapter",
]

# The hand-written chat formats (for checkpoints without a template): each image is "<image>\n"
VICUNA = ChatFormat(user="USER: ", assistant=" ASSISTANT:", end="</s>", image="<image>\n")
MISTRAL = ChatFormat(user="[INST] ", assistant=" [/INST]", end="</s>", image="<image>\n", system="{}\n\n")
CHATML = replace(chat.CHATML, image="<image>\n")
LLAMA3 = ChatFormat(
    user="<|start_header_id|>user<|end_header_id|>\n\n",
    assistant="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    end="<|eot_id|>",
    image="<image>\n",
    system="<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>",
)
# LLaVA-OneVision: all images and videos, then one newline
ONEVISION = replace(CHATML, image="<image>", video="<video>", after_visuals="\n")
# Class tokens a vision tower puts before its patches; the "default" feature strategy drops the first token.
CLASS_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}


@dataclass
class _Layout:
    """The placeholder tokens of one image or video: how many, which are visual cells, and their cells."""

    count: int
    keep: np.ndarray  # indices into the placeholders of the tokens that cover pixels of the unit
    cells: np.ndarray  # [len(keep), 4] in the unit's own pixels

    @classmethod
    def of(cls, count: int, slots: np.ndarray, cells: np.ndarray) -> _Layout:
        """Placeholders `slots` with `cells`, less those whose cell lies wholly in padding."""
        real = (cells[:, 2] > cells[:, 0]) & (cells[:, 3] > cells[:, 1])
        return cls(count, slots[real], cells[real])


class LlavaAdapter(ChatAdapter):
    """LLaVA-1.5: each image is one fixed grid of ViT patches, after the processor's resize and centre crop."""

    fallback = VICUNA
    label = "LLaVA-1.5"
    pixel_keys: tuple[str, ...] = ("pixel_values",)

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, name: str, template: str | None = None
    ) -> None:
        super().__init__(model, tokenizer, name, template)
        self.image_processor = image_processor
        config = model.config
        vision = config.vision_config
        strategy = config.vision_feature_select_strategy
        if CLASS_TOKENS.get(vision.model_type) != int(strategy == "default"):
            raise ValueError(
                f"{self.label}: a {vision.model_type!r} vision tower with feature strategy {strategy!r} is not "
                "supported (its tokens would not be exactly its patches); supported: CLIP with 'default', "
                "SigLIP with 'full'"
            )
        self.patch = int(vision.patch_size)
        self.tile = int(vision.image_size)
        self.per_tile = self.tile // self.patch
        self.image_token = int(config.image_token_id)
        self.placeholders = {"image": str(tokenizer.convert_ids_to_tokens(self.image_token))}

    def modality_tokens(self) -> dict[int, int]:
        return {self.image_token: 1}

    def expand(self, out: Assembled, units: list[VisualUnit]) -> list[Expansion]:
        """Each image's placeholder repeated once per token of its layout (LlavaProcessor)."""
        for index, unit in enumerate(units):
            if unit.kind == "frame":
                raise ValueError(f"{self.label} does not support video (unit {index} is a frame)")
        images = self._load(units, range(len(units)))
        pixels = self.image_processor(images=images, return_tensors="pt")
        for key in self.pixel_keys:
            out.add_pixels(key, pixels[key])
        return [self._place("image", self._layout(*image.size), np.full(1, k)) for k, image in enumerate(images)]

    def _load(self, units: list[VisualUnit], indices: Any) -> list[Image.Image]:
        """The images of `units[indices]`; one smaller than a patch of the vision tower is an error."""
        images = []
        for index in indices:
            image = units[index].load()
            if min(image.size) < self.patch:
                raise ValueError(
                    f"unit {index}: {image.width}x{image.height} px is smaller than one {self.patch}-px patch "
                    f"of the {self.label} vision tower"
                )
            images.append(image)
        return images

    def _place(self, kind: str, layout: _Layout, units: np.ndarray) -> Expansion:
        """The layout's placeholders, and its visual tokens' units (`units`: one, or one per token) and cells."""
        token = self.image_token if kind == "image" else int(self.model.config.video_token_id)
        n = len(layout.keep)
        return Expansion(
            kind,
            self.placeholders[kind] * layout.count,
            token,
            layout.count,
            layout.keep,
            np.broadcast_to(units, n).astype(np.int64),
            np.ones(n, dtype=np.int64),
            layout.cells,
        )

    def _layout(self, width: int, height: int) -> _Layout:
        """Pad to square (if set), resize, centre crop (transformers' `center_crop` offsets); one token per patch."""
        proc = self.image_processor
        side_w, side_h = (max(width, height),) * 2 if proc.do_pad else (width, height)
        res_h, res_w = _resized(proc.size, side_h, side_w) if proc.do_resize else (side_h, side_w)
        crop_h, crop_w = (proc.crop_size.height, proc.crop_size.width) if proc.do_center_crop else (res_h, res_w)
        sx, sy = res_w / side_w, res_h / side_h
        offset = (
            (side_w - width) // 2 * sx - (res_w - crop_w) // 2,
            (side_h - height) // 2 * sy - (res_h - crop_h) // 2,
        )
        rows, cols = crop_h // self.patch, crop_w // self.patch
        boxes = _grid(
            _extents(0, rows, rows, rows, crop_h, self.patch), _extents(0, cols, cols, cols, crop_w, self.patch)
        )
        return _Layout.of(rows * cols, np.arange(rows * cols), _to_unit(boxes, (sx, sy), offset, (width, height)))


class _AnyresAdapter(LlavaAdapter):
    """LLaVA-NeXT's anyres layout, shared with LLaVA-OneVision: base tile, unpadded tile grid, row newlines."""

    pixel_keys: tuple[str, ...] = ("pixel_values", "image_sizes")

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, name: str, template: str | None = None
    ) -> None:
        super().__init__(model, tokenizer, image_processor, name, template)
        self.pinpoints = [list(p) for p in model.config.image_grid_pinpoints]
        size, crop = image_processor.size, image_processor.crop_size
        base = (size.height, size.width) if size.height and size.width else (size.shortest_edge,) * 2
        tile = crop.height if crop and crop.height else (size.height or size.shortest_edge)
        pinpoints = [list(p) for p in image_processor.image_grid_pinpoints]
        if base != (self.tile, self.tile) or tile != self.tile or pinpoints != self.pinpoints:
            raise ValueError(
                f"{self.label}: the image processor (base {base}, tiles of {tile} px, pinpoints {pinpoints}) does "
                f"not match the model (tiles of {self.tile} px, pinpoints {self.pinpoints})"
            )

    def concat(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """Tile stacks are zero-padded to the most tiles, as the processor does; the model reads only the real ones."""
        if key != "pixel_values":
            return super().concat(key, values)
        most = max(v.shape[1] for v in values)
        return torch.cat([torch.nn.functional.pad(v, (0, 0, 0, 0, 0, 0, 0, most - v.shape[1])) for v in values])

    def _square_cells(self, count: int) -> np.ndarray:
        """Boxes of a count x count grid of cells over one tile's patches, in the tile's pixels."""
        side = _extents(0, self.per_tile, count, self.per_tile, self.tile, self.patch)
        return _grid(side, side)

    def _shrunk(self, rows: int, cols: int) -> tuple[int, int]:
        """The token grid of an unpadded rows x cols patch grid (NeXT keeps it)."""
        return rows, cols

    def _layout(self, width: int, height: int) -> _Layout:
        n, tile = self.per_tile, self.tile
        base = _to_unit(self._square_cells(n), (tile / width, tile / height), (0, 0), (width, height))
        best_h, best_w = select_best_resolution((height, width), self.pinpoints)
        fit_h, fit_w = _fit(height, width, best_h, best_w)
        rows, cols = best_h // tile * n, best_w // tile * n
        kept_rows, kept_cols = unpad_image(torch.empty(0, rows, cols), (height, width)).shape[1:]
        out_rows, out_cols = self._shrunk(kept_rows, kept_cols)
        top, left = (rows - kept_rows) // 2, (cols - kept_cols) // 2
        boxes = _grid(
            _extents(top, top + kept_rows, out_rows, n, tile, self.patch),
            _extents(left, left + kept_cols, out_cols, n, tile, self.patch),
        )
        paste = ((best_w - fit_w) // 2, (best_h - fit_h) // 2)
        tiles = _to_unit(boxes, (fit_w / width, fit_h / height), paste, (width, height))
        # placeholders: n*n base tokens, then each grid row's tokens followed by its newline
        grid_slots = n * n + np.arange(out_rows)[:, None] * (out_cols + 1) + np.arange(out_cols)
        slots = np.concatenate([np.arange(n * n), grid_slots.ravel()])
        return _Layout.of(n * n + out_rows * (out_cols + 1), slots, np.concatenate([base, tiles]))


class LlavaNextAdapter(_AnyresAdapter):
    """LLaVA-NeXT: anyres tiles; the chat format follows the checkpoint's language model."""

    label = "LLaVA-NeXT"

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, name: str, template: str | None = None
    ) -> None:
        self.fallback = _next_chat(tokenizer, str(model.config.text_config.model_type))
        super().__init__(model, tokenizer, image_processor, name, template)


class LlavaOnevisionAdapter(_AnyresAdapter):
    """LLaVA-OneVision: anyres images (a square base grid each when several), pooled video frames; Qwen2 chat."""

    fallback = ONEVISION
    label = "LLaVA-OneVision"
    pixel_keys: tuple[str, ...] = ("pixel_values", "image_sizes", "batch_num_images")

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, name: str, template: str | None = None
    ) -> None:
        super().__init__(model, tokenizer, image_processor, name, template)
        self.video_token = int(model.config.video_token_id)
        self.placeholders = {**self.placeholders, "video": str(tokenizer.convert_ids_to_tokens(self.video_token))}
        self.max_tiles = int(model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        self.pooled = math.ceil(self.per_tile / 2)
        # the video processor needs torchvision; its steps (squash to one tile, rescale, normalise) are these
        self.frame_processor = LlavaImageProcessorPil(
            size={"height": self.tile, "width": self.tile},
            do_center_crop=False,
            do_pad=False,
            resample=image_processor.resample,
            rescale_factor=image_processor.rescale_factor,
            image_mean=image_processor.image_mean,
            image_std=image_processor.image_std,
        )

    def modality_tokens(self) -> dict[int, int]:
        return {self.image_token: 1, self.video_token: 2}

    def expand(self, out: Assembled, units: list[VisualUnit]) -> list[Expansion]:
        """Images (a square base grid each when several) and videos (pooled frames), in order."""
        groups = unit_groups(units)
        stills = [g[0] for g in groups if units[g[0]].kind != "frame"]
        images = dict(zip(stills, self._load(units, stills), strict=True))
        parts, videos = [], []
        for group in groups:
            if group[0] in images:
                image = images[group[0]]
                layout = self._square_layout(*image.size) if len(images) > 1 else self._layout(*image.size)
                parts.append(self._place("image", layout, np.full(1, group[0])))
                continue
            frames = self._load(units, group)
            layout = self._video_layout([f.size for f in frames])
            frame_of = np.asarray(group)[layout.keep // self.pooled**2]
            parts.append(self._place("video", layout, frame_of))
            square = resize_frames(frames, self.tile, self.tile)  # as the video processor resizes them
            videos.append(
                self.frame_processor(images=square, do_resize=False, return_tensors="pt")["pixel_values"][None]
            )
        if images:
            pixels = self.image_processor(images=[list(images.values())], return_tensors="pt")
            for key in self.pixel_keys:
                out.add_pixels(key, pixels[key])
        if videos:
            out.add_pixels("pixel_values_videos", self.concat("pixel_values_videos", videos))
        return parts

    def concat(self, key: str, values: list[torch.Tensor]) -> torch.Tensor:
        """Videos go to the model as one [videos, frames, ...] tensor, so they must have equal frame counts."""
        if key == "pixel_values_videos" and len({v.shape[1] for v in values}) > 1:
            counts = sorted({int(v.shape[1]) for v in values})
            raise ValueError(
                f"{self.label} takes the videos of one input as one tensor, so they need equal frame counts, got "
                f"{counts}; encode or batch such videos separately"
            )
        return super().concat(key, values)

    def _shrunk(self, rows: int, cols: int) -> tuple[int, int]:
        """pack_image_features: a grid above anyres_max_N tiles of patches shrinks (bilinear) to about that."""
        ratio = math.sqrt(rows * cols / (self.max_tiles * self.per_tile**2))
        if ratio > 1.1:
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def _square_layout(self, width: int, height: int) -> _Layout:
        """One image of several: padded to a centred square, resized to one tile, plus one newline."""
        side, n = max(width, height), self.per_tile
        scale = self.tile / side
        offset = ((side - width) // 2 * scale, (side - height) // 2 * scale)
        cells = _to_unit(self._square_cells(n), (scale, scale), offset, (width, height))
        return _Layout.of(n * n + 1, np.arange(n * n), cells)

    def _video_layout(self, sizes: list[tuple[int, int]]) -> _Layout:
        """Each frame squashed to one tile and pooled to ceil(n/2)^2 tokens; one newline after the last frame."""
        grid = self._square_cells(self.pooled)
        cells = [_to_unit(grid, (self.tile / w, self.tile / h), (0, 0), (w, h)) for w, h in sizes]
        tokens = len(sizes) * len(grid)
        return _Layout.of(tokens + 1, np.arange(tokens), np.concatenate(cells))


def _extents(start: float, stop: float, count: int, per_tile: int, tile: int, patch: int) -> np.ndarray:
    """Canvas pixel extents [count, 2] of `count` equal cells over grid positions [start, stop) of one axis.

    Grid position k is a patch of the tiles laid side by side: `per_tile` patches of `patch` px in each `tile`
    px tile. A cell that ends on a tile boundary ends at that tile's last patch.
    """
    bounds = np.linspace(start, stop, count + 1)
    first = np.floor(bounds[:-1] / per_tile)
    last = np.maximum(np.ceil(bounds[1:] / per_tile) - 1, 0)
    low = first * tile + (bounds[:-1] - first * per_tile) * patch
    high = last * tile + (bounds[1:] - last * per_tile) * patch
    return np.stack([low, high], axis=1)


def _grid(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Row-major boxes (x0, y0, x1, y1) of the grid with row extents `rows` and column extents `cols`."""
    y = np.repeat(rows, len(cols), axis=0)
    x = np.tile(cols, (len(rows), 1))
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def _to_unit(
    boxes: np.ndarray, scale: tuple[float, float], offset: tuple[float, float], size: tuple[int, int]
) -> np.ndarray:
    """Canvas boxes back in the unit's pixels (canvas = scale * unit + offset, per axis), clipped to the unit."""
    width, height = size
    return np.clip((boxes - np.array(offset * 2)) / np.array(scale * 2), 0, [width, height, width, height])


def _resized(size: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) after the processor's resize (transformers' `get_resize_output_image_size`)."""
    if size.height and size.width:
        return int(size.height), int(size.width)
    if size.shortest_edge and not size.longest_edge:
        short = int(size.shortest_edge)
        long = int(short * max(height, width) / min(height, width))
        return (long, short) if width <= height else (short, long)
    raise ValueError(f"unsupported resize setting {size} of the image processor")


def _fit(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Size of the image resized to fit (target_h, target_w) keeping its aspect (`get_patch_output_size`)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def _next_chat(tokenizer: Any, text_model: str) -> ChatFormat:
    """LLaVA-NeXT's chat format: ChatML (Yi, Qwen), Llama-3, Mistral's [INST], else Vicuna's USER/ASSISTANT."""
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" in vocab:
        return CHATML
    if "<|start_header_id|>" in vocab:
        return LLAMA3
    return MISTRAL if text_model == "mistral" else VICUNA


ADAPTERS: dict[str, tuple[type[LlavaAdapter], Any]] = {
    "llava": (LlavaAdapter, LlavaImageProcessorPil),
    "llava_next": (LlavaNextAdapter, LlavaNextImageProcessorPil),
    "llava_onevision": (LlavaOnevisionAdapter, LlavaOnevisionImageProcessorPil),
}


def make_adapter(model: Any, tokenizer: Any, path: str, name: str, template: str | None = None) -> LlavaAdapter:
    """The adapter for a loaded LLaVA-1.5, LLaVA-NeXT or LLaVA-OneVision model; image processor from `path`."""
    adapter, processor = ADAPTERS[str(model.config.model_type)]
    return adapter(model, tokenizer, processor.from_pretrained(path), name, template)

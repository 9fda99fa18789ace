"""InternVL adapter: transformers' native InternVL classes (the InternVL3 / InternVL3.5 "-hf" checkpoints).

Geometry, as GotOcr2ImageProcessor (crop_to_patches) and InternVLModel.get_image_features compute it: an
image is resized to (cols * tile, rows * tile) px, where (cols, rows) is the grid of min_patches..max_patches
tiles whose aspect ratio is closest to the image's (get_optimal_tiled_canvas); it is cut into tiles row by
row and, when there are several, followed by a thumbnail (the whole image resized to one tile). Each tile
is cut into patch x patch squares, and the pixel shuffle merges every (1 / downsample_ratio)^2 block of
patches into one decoder token, row-major, so a token covers a (patch / downsample_ratio)-px square of its
tile. Video frames are single tiles (no tiling, no thumbnail), each written "FrameN: <img>...</img>".
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)

from corehead.data.sample import VisualUnit
from corehead.models.base import Assembled, ChatAdapter, Expansion, resize_frames, unit_groups
from corehead.models.chat import CHATML

__all__ = ["InternVLAdapter", "make_adapter"]

START_IMAGE = "<img>"
END_IMAGE = "</img>"
IMAGE, VIDEO = "<IMG_CONTEXT>", "<video>"
# The hand-written format (for checkpoints without a template): ChatML, each image or video on its own line
FALLBACK = replace(CHATML, image=f"{IMAGE}\n", video=f"{VIDEO}\n")


class InternVLAdapter(ChatAdapter):
    """Encodes samples for an InternVL model exactly as InternVLProcessor would, and knows each token's pixels."""

    fallback = FALLBACK

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, name: str, template: str | None = None
    ) -> None:
        super().__init__(model, tokenizer, name, template)
        self.image_processor = image_processor
        self.placeholders = {"image": IMAGE, "video": VIDEO}
        config = model.config
        vocab = tokenizer.get_vocab()
        missing = [t for t in (START_IMAGE, END_IMAGE) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer of {name} lacks InternVL's image tokens {missing}")
        self.image_token = int(config.image_token_id)
        self.start_token = int(vocab[START_IMAGE])
        self.close_token = int(vocab[END_IMAGE])
        self.wrappers = {self.start_token, self.close_token}
        merge = round(1 / config.downsample_ratio)
        patch_h, patch_w = (int(v) for v in config.vision_config.patch_size)
        size = image_processor.size
        self.tile = int(size.height)
        self.cell = patch_h * merge  # tile pixels per token side
        # get_image_features folds each tile's features into a square grid, so tiles and patches are square
        if size.width != size.height or patch_w != patch_h or self.tile % self.cell:
            raise ValueError(
                f"InternVL needs square tiles made of whole tokens; got tiles {size.width}x{size.height} px, "
                f"patches {patch_w}x{patch_h} px, downsample ratio {config.downsample_ratio}"
            )
        self.side = self.tile // self.cell  # tokens per tile side

    def cap_pixels(self, max_pixels: int) -> None:
        """At most as many tiles as fit in `max_pixels` (at least one)."""
        self.image_processor.max_patches = max(1, max_pixels // (self.tile * self.tile))
        self.image_processor.min_patches = min(int(self.image_processor.min_patches), self.image_processor.max_patches)

    def expand(self, out: Assembled, units: list[VisualUnit]) -> list[Expansion]:
        """Each image as <img>, its tiles' (+ thumbnail's) tokens, </img>; each video as "FrameN: <img>...</img>"
        lines, one per frame (InternVLProcessor)."""
        parts = []
        for group in unit_groups(units):
            frames = units[group[0]].kind == "frame"
            blocks, owners, cells = [], [], []
            for k, index in enumerate(group):
                pixels, unit_cells = self._frame(units[index]) if frames else self._image(units[index])
                out.add_pixels("pixel_values", pixels)
                block = f"{START_IMAGE}{IMAGE * len(unit_cells)}{END_IMAGE}"
                blocks.append(f"Frame{k + 1}: {block}" if frames else block)
                owners.append(np.full(len(unit_cells), index))
                cells.append(unit_cells)
            n = sum(len(c) for c in cells)
            parts.append(
                Expansion(
                    "video" if frames else "image",
                    "\n".join(blocks),
                    self.image_token,
                    n,
                    np.arange(n),
                    np.concatenate(owners),
                    np.ones(n, dtype=np.int64),
                    np.concatenate(cells),
                )
            )
        return parts

    def _image(self, unit: VisualUnit) -> tuple[torch.Tensor, np.ndarray]:
        """Tiles (+ thumbnail) of one image and the cell of each of their tokens, in tile order."""
        image = unit.load()
        width, height = image.size
        low, high = int(self.image_processor.min_patches), int(self.image_processor.max_patches)
        cols, rows = (1, 1)
        if high > 1:  # the processor tiles only when more than one tile is allowed
            cols, rows = get_optimal_tiled_canvas((height, width), (self.tile, self.tile), low, high)
        pixels = self.image_processor(images=[image], crop_to_patches=True, return_tensors="pt")["pixel_values"]
        sx, sy = width / (cols * self.tile), height / (rows * self.tile)
        cells = [self._tile_cells(col, row, sx, sy) for row in range(rows) for col in range(cols)]
        if len(cells) > 1:
            cells.append(self._tile_cells(0, 0, width / self.tile, height / self.tile))
        if len(pixels) != len(cells):
            raise ValueError(f"the image processor cut {unit.source!r} into {len(pixels)} tiles, expected {len(cells)}")
        return pixels, np.concatenate(cells)

    def _frame(self, unit: VisualUnit) -> tuple[torch.Tensor, np.ndarray]:
        """One video frame, resized to a single tile as InternVL's video processor does."""
        image = unit.load()
        tile = resize_frames([image], self.tile, self.tile)  # as the video processor resizes frames
        pixels = self.image_processor(images=tile, crop_to_patches=False, do_resize=False, return_tensors="pt")
        pixels = pixels["pixel_values"]
        width, height = image.size
        return pixels, self._tile_cells(0, 0, width / self.tile, height / self.tile)

    def _tile_cells(self, col: int, row: int, sx: float, sy: float) -> np.ndarray:
        """Cells of the tokens of the tile at (col, row) of the resized canvas, scaled by (sx, sy) to the unit."""
        r, c = np.divmod(np.arange(self.side * self.side), self.side)
        x = col * self.tile + c * self.cell
        y = row * self.tile + r * self.cell
        return np.stack([x * sx, y * sy, (x + self.cell) * sx, (y + self.cell) * sy], axis=1)


def make_adapter(model: Any, tokenizer: Any, path: str, name: str, template: str | None = None) -> InternVLAdapter:
    """The adapter for a loaded InternVL checkpoint; its tiling settings (size, min/max_patches) come from `path`."""
    return InternVLAdapter(model, tokenizer, GotOcr2ImageProcessorPil.from_pretrained(path), name, template)

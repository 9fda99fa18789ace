"""Probes and assertions shared by the adapters' geometry tests: painted images whose colours must reach the
tokens the visual token map assigns them, region round trips, and padded batches against single samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from corehead.data.sample import Region, Sample, VisualUnit
from corehead.models.base import sample_region_tokens

Spec = tuple[str, int, int]  # unit kind, width, height
WHITE = (255, 255, 255)


# --------------------------------------------------------------------------- probes


def probe_sample(units: list[VisualUnit]) -> Sample:
    """A sample around `units` with a one-word answer and a region on the first unit."""
    return Sample("geo", units, "What colour is the star?", "red", [Region(0, None)])


def probe_units(specs: Sequence[Spec], images: list[Image.Image] | None = None) -> list[VisualUnit]:
    """Units of the given kinds and sizes (frame i at i s, page i + 1): `images`, or blank white ones."""
    units = []
    for i, (kind, w, h) in enumerate(specs):
        image = images[i] if images is not None else Image.new("RGB", (w, h), WHITE)
        extra = {"frame": i, "timestamp": float(i)} if kind == "frame" else {"page": i + 1} if kind == "page" else {}
        units.append(VisualUnit(kind, f"u{i}", w, h, image=image, **extra))  # type: ignore[arg-type]
    return units


def palette(n: int, salt: int = 0) -> np.ndarray:
    """n random RGB colours [n, 3], the same for the same salt."""
    return np.random.default_rng(1234 + salt).integers(0, 256, size=(n, 3))


def spaced_palette(n: int, salt: int) -> np.ndarray:
    """n distinct colours at least 10 apart, far from black, white and grey (the square padding)."""
    levels = np.arange(60, 231, 10)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[np.linalg.norm(grid - grid.mean(axis=1, keepdims=True), axis=1) > 40]
    return grid[np.random.default_rng(salt).choice(len(grid), n, replace=False)]


def paint(
    width: int, height: int, cells: np.ndarray, colours: np.ndarray, background: tuple[int, int, int] = (0, 0, 0)
) -> Image.Image:
    """An image of `background` with each cell (x0, y0, x1, y1 in pixels) filled with its colour."""
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    for (x0, y0, x1, y1), c in zip(cells, colours, strict=True):
        draw.rectangle((round(x0), round(y0), round(x1) - 1, round(y1) - 1), fill=tuple(int(v) for v in c))
    return img


def nearest(found: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """For each found colour [N, 3], the index of the nearest of `colours`."""
    return np.argmin(((found[:, None, :] - colours[None, :, :]) ** 2).sum(-1), axis=1)


# --------------------------------------------------------------------------- assertions


def assert_cells_cover_box(cells: np.ndarray, box: tuple[float, float, float, float]) -> None:
    """The union of `cells` covers `box` to within one cell on every side."""
    x0, y0, x1, y1 = box
    cell_w = (cells[:, 2] - cells[:, 0]).max()
    cell_h = (cells[:, 3] - cells[:, 1]).max()
    assert cells[:, 0].min() <= x0 + cell_w and cells[:, 2].max() >= x1 - cell_w
    assert cells[:, 1].min() <= y0 + cell_h and cells[:, 3].max() >= y1 - cell_h


def assert_cells_half_inside(cells: np.ndarray, box: tuple[float, float, float, float]) -> None:
    """Every cell lies at least half inside `box` (the default overlap threshold)."""
    x0, y0, x1, y1 = box
    ix = np.clip(np.minimum(cells[:, 2], x1) - np.maximum(cells[:, 0], x0), 0, None)
    iy = np.clip(np.minimum(cells[:, 3], y1) - np.maximum(cells[:, 1], y0), 0, None)
    area = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    assert np.all(ix * iy >= 0.5 * area - 1e-9)


def assert_regions_round_trip(adapter: Any, sample: Sample, half_inside: bool) -> None:
    """box -> tokens -> the union of their cells covers the box to within one cell, on the region's unit;
    with `half_inside`, every chosen cell is also at least half inside the box (unless the region fell back
    to its nearest cell)."""
    token_map = adapter.encode(sample).token_map
    for region in sample.regions:
        idx, fell_back = token_map.region_tokens(region)
        cells = token_map.cells[idx]
        assert np.all(token_map.covers_unit(region.unit)[idx])
        assert_cells_cover_box(cells, region.box)
        if half_inside and not fell_back:
            assert_cells_half_inside(cells, region.box)
    assert len(sample_region_tokens(sample, token_map).indices) >= 1


def assert_forward_and_generate(adapter: Any, samples: list[Sample]) -> tuple[list[Any], dict[str, torch.Tensor]]:
    """A padded batch gives the same last-token logits as each sample alone, and `generate` answers each
    sample with a string; returns the encoded samples (with answers) and their batch."""
    encoded = [adapter.encode(s, answer=True) for s in samples]
    batch = adapter.collate(encoded)
    with torch.no_grad():
        logits = adapter.model(**batch).logits
        assert logits.shape[:2] == batch["input_ids"].shape
        for i, e in enumerate(encoded):
            alone = adapter.model(**e.inputs).logits[0, -1]
            assert torch.allclose(alone, logits[i, -1], atol=1e-4)
    answers = adapter.generate(samples, max_new_tokens=3)
    assert len(answers) == len(samples) and all(isinstance(a, str) for a in answers)
    return encoded, batch


def assert_marks(adapter: Any, sample: Any) -> Any:
    """encode(answer=True) marks the question, answer and last prompt token after the visual input."""
    enc = adapter.encode(sample, answer=True)
    decode = adapter.tokenizer.decode
    ids = enc.inputs["input_ids"][0]
    assert decode(ids[enc.question]) == sample.question
    assert decode(ids[enc.answer]) == sample.answer
    assert enc.prompt_end == enc.answer[0] - 1
    assert enc.token_map.positions.max() < enc.question.min()
    return enc

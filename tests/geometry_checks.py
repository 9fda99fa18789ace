"""Assertions shared by the adapters' geometry tests."""

from __future__ import annotations

from typing import Any

import numpy as np


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

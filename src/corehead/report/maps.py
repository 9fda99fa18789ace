"""Attention maps a scoring run kept (RUN/maps/), made ready to draw: pictures, token boxes, per-head mass."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from safetensors import safe_open

from corehead.report.page import picture_uri
from corehead.runfolder import RunFolder

MAX_UNITS = 8  # pictures (pages, frames) shown per sample


@dataclass
class SampleMaps:
    """One sample's maps from a run, its token boxes moved into the kept pictures' pixels."""

    id: str
    question: str | None
    pictures: list[np.ndarray]
    attention: np.ndarray  # [layers, heads, N] on the chosen query group
    units: np.ndarray  # [N] first unit of each token
    spans: np.ndarray  # [N] units each token covers
    boxes: np.ndarray  # [N, 4] picture pixels
    region: np.ndarray  # [N] bool

    @property
    def shown(self) -> list[int]:
        """The units drawn: all, or MAX_UNITS evenly spaced."""
        n = len(self.pictures)
        return list(range(n)) if n <= MAX_UNITS else sorted({round(float(v)) for v in np.linspace(0, n - 1, MAX_UNITS)})

    def unit_mass(self, values: np.ndarray) -> np.ndarray:
        """Attention mass on each unit: each token's mass split evenly over the units it covers."""
        mass = np.zeros(len(self.pictures))
        for i, (u, span) in enumerate(zip(self.units, self.spans, strict=True)):
            end = min(int(u + span), len(mass))
            mass[int(u) : end] += values[i] / max(1, end - int(u))
        return mass

    def heat(self, values: np.ndarray, unit: int) -> np.ndarray:
        """A map at the picture's resolution: each token's mass (split over its units) painted on its box."""
        picture = self.pictures[unit]
        heat = np.zeros(picture.shape[:2])
        for i, (u, span) in enumerate(zip(self.units, self.spans, strict=True)):
            if u <= unit < u + span:
                x0, y0, x1, y1 = (round(float(v)) for v in self.boxes[i])
                heat[max(0, y0) : y1, max(0, x0) : x1] += values[i] / span
        return heat

    def region_box(self, unit: int) -> tuple[float, float, float, float] | None:
        """The bounding box of the region's tokens on `unit`, in picture pixels (None: none there)."""
        on = self.region & (self.units <= unit) & (unit < self.units + self.spans)
        if not on.any():
            return None
        b = self.boxes[on]
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def mapped_ids(run: Path) -> list[str]:
    """Ids of the samples whose maps the run kept, in the order they were scored."""
    folder = RunFolder(run)
    kept: set[str] = set()
    for path in sorted(folder.maps.glob("part-*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            kept.update(k.rsplit("/", 1)[0] for k in f.keys())  # noqa: SIM118 (not a dict)
    if not kept:
        return []
    scored = pq.read_table(folder.results, columns=["sample_id"]).column(0).to_pylist()
    return [sid for sid in dict.fromkeys(scored) if sid in kept]


def query_groups(run: Path) -> list[str]:
    """The query groups of the run's rows and maps, in the order of the maps' group axis (from its manifest)."""
    return list(RunFolder(run).manifest().get("query_groups", ["all"]))


def load_sample(run: Path, sample_id: str, query: str, questions: dict[str, str]) -> SampleMaps:
    """A sample's maps on `query` rows (all rows when the run has no such group)."""
    m = RunFolder(run).load_maps(sample_id)
    pictures = [m[f"image{k}"] for k in range(len(m["sizes"]))]
    units = m["units"].astype(int)
    scale = np.array([[p.shape[1] / w, p.shape[0] / h] for p, (w, h) in zip(pictures, m["sizes"], strict=True)])
    boxes = m["cells"].astype(float) * np.tile(scale[units], 2)
    groups = query_groups(run)
    group = groups.index(query) if query in groups else 0
    attention = m["attention"][:, :, group, :].astype(np.float32)
    return SampleMaps(
        sample_id, questions.get(sample_id), pictures, attention, units, m["spans"].astype(int), boxes, m["region"]
    )


def sample_data(s: SampleMaps) -> dict[str, Any]:
    """What the head explorer draws: pictures, token boxes, and every head's map (uint8 of its max, base64)."""
    n_layers, n_heads, n = s.attention.shape
    flat = s.attention.reshape(n_layers * n_heads, n).astype(np.float64)
    top = flat.max(axis=1)
    levels = np.round(255 * flat / np.maximum(top, 1e-12)[:, None]).astype(np.uint8)
    return {
        "id": s.id,
        "question": s.question,
        "units": s.shown,
        "pictures": [picture_uri(p) for p in s.pictures],
        "boxes": [s.region_box(u) for u in range(len(s.pictures))],
        "tokens": [
            [int(u), int(sp), *(round(float(v), 1) for v in b)]
            for u, sp, b in zip(s.units, s.spans, s.boxes, strict=True)
        ],
        "maps": base64.b64encode(levels.tobytes()).decode("ascii"),
        "region_mass": np.round(flat[:, s.region].sum(axis=1), 4).tolist(),
        "visual_mass": np.round(flat.sum(axis=1), 4).tolist(),
    }

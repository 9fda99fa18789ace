"""The report page: its sections, the data its JavaScript reads, and the HTML pieces they are made of.

All text from runs and datasets goes through `esc`; JSON inside <script> through `script_json`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TEMPLATE = Path(__file__).with_name("template.html")


class Page:
    """The sections of the report, the data its JavaScript reads and the folder its plot files go to."""

    def __init__(self, files: Path) -> None:
        self.files = files
        self.sections: list[str] = []
        self.data: dict[str, Any] = {"runs": []}

    def add(self, title: str, body: str, anchor: str = "") -> None:
        ident = f' id="{esc(anchor)}"' if anchor else ""
        self.sections.append(f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>")

    def plot(self, draw: Callable[[Path], Path], name: str, alt: str, svg: bool = True) -> str:
        """Draw a figure into the files folder (PNG, and SVG) and return an <img> with the PNG inlined."""
        png = draw(self.files / f"{name}.png")
        if svg:
            draw(self.files / f"{name}.svg")
        return f'<img class="plot" alt="{esc(alt)}" src="{png_uri(png.read_bytes())}">'

    def render(self, title: str, version: str) -> str:
        values = {
            "title": esc(title),
            "version": esc(version),
            "sections": "\n".join(self.sections),
            "data": script_json(self.data),
        }  # one pass, so text put in is never read as a placeholder
        return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], TEMPLATE.read_text(encoding="utf-8"))


def esc(value: Any) -> str:
    """Text for HTML (element content or a quoted attribute)."""
    return html.escape(str(value), quote=True)


def script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: '<', '>' and '&' are written as \\u escapes, so data cannot close it."""
    text = json.dumps(finite(obj), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def finite(obj: Any) -> Any:
    """NaN and infinities as null (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def picture_uri(picture: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return png_uri(buffer.getvalue())


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; header and cells are already escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, fmt)


def ci(bounds: tuple[float, float] | list[float], fmt: str = ".3f") -> str:
    return f"[{num(bounds[0], fmt)}, {num(bounds[1], fmt)}]"


def wall(manifest: dict[str, Any]) -> str:
    """A run's wall time (summed over its launches) and how many processes the last launch used."""
    if "wall_s" not in manifest:
        return "n/a"
    minutes, seconds = divmod(round(manifest["wall_s"]), 60)
    text = f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    procs = manifest.get("processes", 1)
    return (
        text + (f" on {procs} processes" if procs > 1 else "") + ("" if manifest.get("complete") else " (unfinished)")
    )

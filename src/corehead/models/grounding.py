"""Boxes in model answers, read in each family's own convention and mapped back to the original image.

Conventions (what the released checkpoints are trained to emit):
- `pixels`: absolute pixels of the image as the model saw it, after its processor's resize (Qwen2.5-VL);
- `thousandths`: integers 0-1000 relative to the image (Qwen2-VL, Qwen3-VL, InternVL);
- `unit`: floats 0-1 relative to the image (LLaVA family).
"""

from __future__ import annotations

import json
import re

from corehead.data.sample import Box

CONVENTIONS: dict[str, str] = {
    "qwen2_5_vl": "pixels",
    "qwen2_vl": "thousandths",
    "qwen3_vl": "thousandths",
    "internvl": "thousandths",
    "llava": "unit",
    "llava_next": "unit",
    "llava_onevision": "unit",
}

_NUMBER = r"-?\d+(?:\.\d+)?"
# [x0, y0, x1, y1] or (x0,y0),(x1,y1), as the families write them (JSON "bbox_2d", <box>, <|box_start|>)
_FOUR = re.compile(rf"\[\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\]")
_PAIRS = re.compile(rf"\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*,?\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)")


def raw_boxes(text: str) -> list[Box]:
    """Every box written in `text`, in the order written, as four numbers in the model's own units."""
    found: list[tuple[int, Box]] = []
    for pattern in (_FOUR, _PAIRS):
        for match in pattern.finditer(text):
            x0, y0, x1, y1 = (float(v) for v in match.groups())
            found.append((match.start(), (x0, y0, x1, y1)))
    return [box for _, box in sorted(found)]


def to_image_box(box: Box, convention: str, width: int, height: int, seen_size: tuple[int, int] | None = None) -> Box:
    """One box in the model's convention -> pixels of the original width x height image, clipped to it.

    `seen_size` (width, height) is the image size after the processor's resize, needed for `pixels`.
    """
    x0, y0, x1, y1 = box
    if convention == "pixels":
        if seen_size is None:
            raise ValueError("absolute-pixel boxes need the size of the image the model saw")
        sx, sy = width / seen_size[0], height / seen_size[1]
    elif convention == "thousandths":
        sx, sy = width / 1000, height / 1000
    elif convention == "unit":
        sx, sy = float(width), float(height)
    else:
        raise ValueError(f"unknown box convention {convention!r}; known: pixels, thousandths, unit")
    xs = sorted((min(max(x0 * sx, 0.0), width), min(max(x1 * sx, 0.0), width)))
    ys = sorted((min(max(y0 * sy, 0.0), height), min(max(y1 * sy, 0.0), height)))
    return (xs[0], ys[0], xs[1], ys[1])


def format_box(box: Box, family: str, width: int, height: int, seen_size: tuple[int, int] | None = None) -> str:
    """A box in pixels of the original image written as `family` writes boxes: "[x0, y0, x1, y1]" in its
    convention (the gold answer a grounding sample is teacher-forced with)."""
    if family not in CONVENTIONS:
        raise ValueError(f"no box convention known for {family!r}; known: {', '.join(CONVENTIONS)}")
    convention = CONVENTIONS[family]
    x0, y0, x1, y1 = box
    if convention == "pixels":
        if seen_size is None:
            raise ValueError("absolute-pixel boxes need the size of the image the model saw")
        sx, sy = seen_size[0] / width, seen_size[1] / height
        return f"[{round(x0 * sx)}, {round(y0 * sy)}, {round(x1 * sx)}, {round(y1 * sy)}]"
    if convention == "thousandths":
        return f"[{round(x0 / width * 1000)}, {round(y0 / height * 1000)}, {round(x1 / width * 1000)}, {round(y1 / height * 1000)}]"
    return f"[{x0 / width:.3f}, {y0 / height:.3f}, {x1 / width:.3f}, {y1 / height:.3f}]"


def parse_boxes(text: str, family: str, width: int, height: int, seen_size: tuple[int, int] | None = None) -> list[Box]:
    """The boxes a model of `family` wrote in `text`, in pixels of the original image."""
    if family not in CONVENTIONS:
        raise ValueError(f"no box convention known for {family!r}; known: {', '.join(CONVENTIONS)}")
    return [to_image_box(b, CONVENTIONS[family], width, height, seen_size) for b in raw_boxes(_unwrap(text))]


def _unwrap(text: str) -> str:
    """Answers often come as JSON in a ```json fence; boxes inside it are plain lists either way."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    body = fenced.group(1) if fenced else text
    try:
        return json.dumps(json.loads(body))
    except json.JSONDecodeError:
        return body

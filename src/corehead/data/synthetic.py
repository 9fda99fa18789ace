"""Synthetic grounded data in three domains, deterministic for a seed.

Every sample needs retrieval: the answer is readable only inside one small region among many similar
distractors, and the question names that region by another attribute (a shape, a key icon, a time).

- scenes: one image, 6-10 shapes of distinct kinds; "What colour is the star?".
- pages:  a 2-3 page document of key-value lines (a shape icon, then a digit); "Which number is next
          to the star?"; the region is that line on its page (its page is the page-level evidence).
- clips:  8 frames at 1 fps (160 px) in which three shapes (28-40 px, as in scenes) move and change
          colour; "What colour is the star between 2 and 4 seconds?"; the region is the star's box in each
          frame of that segment (a tube).

Training and evaluation draw from disjoint random streams (`split`), so held-out samples are never
seen in training. A `Scene` keeps every answerable fact of one generated input, which the trainer uses
to ask several questions about one image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from corehead.data.sample import Box, Region, Sample, VisualUnit

DOMAINS: tuple[str, ...] = ("scenes", "pages", "clips")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 25),
    "purple": (140, 60, 185),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "cross",
    "hexagon",
    "ring",
    "arrow",
    "hourglass",
)
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(1, 10))
SPLITS: dict[str, int] = {"eval": 0, "train": 1}

SCENE_SIZE = 256
PAGE_SIZE = (192, 256)
CLIP_SIZE = 160
CLIP_FRAMES = 8
CLIP_FPS = 1.0
SEGMENT_FRAMES = 2

TEMPLATES: dict[str, tuple[str, ...]] = {
    "scenes": (
        "What colour is the {key}?",
        "Which colour does the {key} have?",
        "What is the colour of the {key}?",
    ),
    "pages": (
        "Which number is next to the {key}?",
        "What value is written beside the {key}?",
        "In this document, which number follows the {key}?",
    ),
    "clips": (
        "What colour is the {key} between {t0} and {t1} seconds?",
        "Between {t0} and {t1} seconds, which colour does the {key} have?",
    ),
}


@dataclass
class Fact:
    """One answerable question about a generated input."""

    question: str
    answer: str
    compact: str  # just the naming words ("star", "star 2"): the one-hop form used early in training
    regions: list[Region]
    key: str


@dataclass
class Thing:
    """A drawn object (or part of one) in one unit, with the labels an auxiliary vision loss may predict."""

    unit: int
    box: Box
    shape: str
    value: str


@dataclass
class Scene:
    """A generated input with every fact it supports."""

    domain: str
    units: list[VisualUnit]
    facts: list[Fact]
    things: list[Thing] = field(default_factory=list)


def _star(corners: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    """A star's outline in the box's frame: outer and inner corners in turn, the first at the top."""
    points = []
    for k in range(2 * corners):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / corners
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _cross(t: float = 0.3) -> list[tuple[float, float]]:
    """A plus sign's outline in the box's frame, its arms 2t wide."""
    return [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]


# polygons in the box's own frame: (-1, -1) is its top left corner, (1, 1) its bottom right one
_OUTLINES: dict[str, list[list[tuple[float, float]]]] = {
    "triangle": [[(0, -1), (1, 1), (-1, 1)]],
    "star": [_star()],
    "diamond": [[(0, -1), (1, 0), (0, 1), (-1, 0)]],
    "cross": [_cross()],
    "hexagon": [[(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]],
    "arrow": [[(-1, -0.3), (0.1, -0.3), (0.1, -1), (1, 0), (0.1, 1), (0.1, 0.3), (-1, 0.3)]],
    "hourglass": [[(-1, -1), (1, -1), (0, 0)], [(-1, 1), (1, 1), (0, 0)]],
}


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    box: Box,
    fill: tuple[int, int, int],
    background: tuple[int, int, int],
) -> None:
    """Draw one of SHAPES filling `box` (`background` fills the hole of a ring)."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape in _OUTLINES:
        for points in _OUTLINES[shape]:
            draw.polygon([(cx + px * w / 2, cy + py * h / 2) for px, py in points], fill=fill)
    elif shape in ("circle", "ring"):
        draw.ellipse(box, fill=fill)
        if shape == "ring":
            inner = min(w, h) / 2 * 0.5
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=background)
    elif shape == "square":
        draw.rectangle((x0 + w * 0.08, y0 + h * 0.08, x1 - w * 0.08, y1 - h * 0.08), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _rng(domain: str, seed: int, index: int, split: str, stream: int = 0) -> np.random.Generator:
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose from {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    return np.random.default_rng([SPLITS[split], DOMAINS.index(domain), seed, index, stream])


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    base = int(rng.integers(225, 250))
    tint = rng.integers(-8, 9, size=3)
    return tuple(int(np.clip(base + t, 0, 255)) for t in tint)  # type: ignore[return-value]


def _place(rng: np.random.Generator, sizes: list[int], width: int, height: int, margin: int = 4) -> list[Box]:
    """Non-overlapping boxes of the given sizes inside width x height (rejection sampling)."""
    for _ in range(200):
        boxes: list[Box] = []
        for s in sizes:
            for _ in range(100):
                x = int(rng.integers(margin, width - s - margin))
                y = int(rng.integers(margin, height - s - margin))
                cand = (x, y, x + s, y + s)
                if all(
                    cand[0] >= b[2] + margin
                    or cand[2] + margin <= b[0]
                    or cand[1] >= b[3] + margin
                    or cand[3] + margin <= b[1]
                    for b in boxes
                ):
                    boxes.append((float(cand[0]), float(cand[1]), float(cand[2]), float(cand[3])))
                    break
            else:
                break
        if len(boxes) == len(sizes):
            return boxes
    raise RuntimeError("could not place objects without overlap")  # unreachable for the sizes used here


def _scenes(rng: np.random.Generator, source: str) -> Scene:
    n = int(rng.integers(6, 11))
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n, replace=False)]
    colours = [list(COLOURS)[i] for i in rng.integers(0, len(COLOURS), size=n)]
    boxes = _place(rng, [int(s) for s in rng.integers(28, 45, size=n)], SCENE_SIZE, SCENE_SIZE)
    bg = _background(rng)
    img = Image.new("RGB", (SCENE_SIZE, SCENE_SIZE), bg)
    draw = ImageDraw.Draw(img)
    for shape, colour, box in zip(shapes, colours, boxes, strict=True):
        draw_shape(draw, shape, box, COLOURS[colour], bg)
    unit = VisualUnit("image", f"{source}/image", SCENE_SIZE, SCENE_SIZE, image=img)
    facts = [
        Fact(_template(rng, "scenes").format(key=s), c, s, [Region(0, b)], s)
        for s, c, b in zip(shapes, colours, boxes, strict=True)
    ]
    things = [Thing(0, b, s, c) for s, c, b in zip(shapes, colours, boxes, strict=True)]
    return Scene("scenes", [unit], facts, things)


def _pages(rng: np.random.Generator, source: str) -> Scene:
    n_pages = int(rng.integers(2, 4))
    rows = int(rng.integers(3, len(SHAPES) // n_pages + 1))
    keys = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n_pages * rows, replace=False)]
    width, height = PAGE_SIZE
    units, facts, things = [], [], []
    for p in range(n_pages):
        paper = (252, 252, 250)
        img = Image.new("RGB", (width, height), paper)
        draw = ImageDraw.Draw(img)
        draw.rectangle((10, 10, 10 + int(rng.integers(60, 150)), 20), fill=(150, 150, 155))
        top, bottom = 34, height - 14
        spacing = (bottom - top) / rows
        for r in range(rows):
            key = keys[p * rows + r]
            value = DIGITS[int(rng.integers(0, len(DIGITS)))]
            y = int(top + r * spacing + rng.integers(0, max(1, int(spacing) - 30)))
            x_key = int(rng.integers(8, 24))
            draw_shape(draw, key, (x_key, y + 2, x_key + 22, y + 24), (45, 45, 50), paper)
            x_val = int(rng.integers(120, 160))
            for x in range(x_key + 30, x_val - 8, 6):
                draw.rectangle((x, y + 18, x + 2, y + 19), fill=(170, 170, 170))
            draw.text((x_val, y - 2), value, fill=(10, 10, 10), font=_font(26))
            box = (float(x_key - 2), float(y), float(x_val + 20), float(y + 27))
            facts.append(Fact(_template(rng, "pages").format(key=key), value, key, [Region(p, box)], key))
            # the icon and the digit each carry the whole line's labels: a vision tower that predicts
            # them has bound key to value along the row
            things.append(Thing(p, (x_key, y + 2, x_key + 22, y + 24), key, value))
            things.append(Thing(p, (x_val, y + 2, x_val + 16, y + 26), key, value))
        draw.text((width - 24, height - 14), str(p + 1), fill=(120, 120, 120), font=_font(10))
        units.append(VisualUnit("page", f"{source}/page{p + 1}", width, height, page=p + 1, image=img))
    return Scene("pages", units, facts, things)


def _clips(rng: np.random.Generator, source: str) -> Scene:
    n_obj, n_seg = 3, CLIP_FRAMES // SEGMENT_FRAMES
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n_obj, replace=False)]
    names = list(COLOURS)
    colours = [[names[i] for i in rng.integers(0, len(names), size=n_seg)] for _ in range(n_obj)]
    lane = CLIP_SIZE / n_obj
    sizes = [int(s) for s in rng.integers(28, 41, size=n_obj)]
    x = [float(rng.integers(2, CLIP_SIZE - s - 2)) for s in sizes]
    vx = [float(rng.choice([-1, 1]) * rng.integers(3, 9)) for _ in range(n_obj)]
    y = [o * lane + float(rng.integers(0, max(1, int(lane) - s))) for o, s in enumerate(sizes)]
    bg = _background(rng)
    units, boxes = [], []  # boxes[frame][object]
    for f in range(CLIP_FRAMES):
        img = Image.new("RGB", (CLIP_SIZE, CLIP_SIZE), bg)
        draw = ImageDraw.Draw(img)
        frame_boxes = []
        for o in range(n_obj):
            box = (x[o], y[o], x[o] + sizes[o], y[o] + sizes[o])
            draw_shape(draw, shapes[o], box, COLOURS[colours[o][f // SEGMENT_FRAMES]], bg)
            frame_boxes.append(box)
            x[o] += vx[o]
            if x[o] < 1 or x[o] + sizes[o] > CLIP_SIZE - 1:
                vx[o] = -vx[o]
                x[o] = float(np.clip(x[o], 1, CLIP_SIZE - 1 - sizes[o]))
        boxes.append(frame_boxes)
        units.append(
            VisualUnit(
                "frame",
                f"{source}/frame{f}",
                CLIP_SIZE,
                CLIP_SIZE,
                frame=f,
                timestamp=f / CLIP_FPS,
                image=img,
            )
        )
    facts: list[Fact] = []
    things: list[Thing] = []
    for o, shape in enumerate(shapes):
        for s in range(n_seg):
            frames = range(s * SEGMENT_FRAMES, (s + 1) * SEGMENT_FRAMES)
            t0, t1 = int(frames[0] / CLIP_FPS), int((frames[-1] + 1) / CLIP_FPS)
            question = _template(rng, "clips").format(key=shape, t0=t0, t1=t1)
            regions = [Region(f, boxes[f][o]) for f in frames]
            facts.append(Fact(question, colours[o][s], f"{shape} {t0}", regions, shape))
        things.extend(Thing(f, boxes[f][o], shape, colours[o][f // SEGMENT_FRAMES]) for f in range(CLIP_FRAMES))
    return Scene("clips", units, facts, things)


def _template(rng: np.random.Generator, domain: str) -> str:
    options = TEMPLATES[domain]
    return options[int(rng.integers(0, len(options)))]


_BUILDERS = {"scenes": _scenes, "pages": _pages, "clips": _clips}


def make_scene(domain: str, seed: int, index: int, split: str = "eval") -> Scene:
    """The index-th generated input of a domain for a seed; identical on every call."""
    rng = _rng(domain, seed, index, split)
    return _BUILDERS[domain](rng, f"synthetic:{domain}/{split}/seed{seed}/{index}")


def scene_sample(scene: Scene, fact: Fact, sample_id: str, meta: dict | None = None) -> Sample:
    """A Sample asking one fact of a scene; the other facts' regions in the same units are distractors, each
    tagged with its object (the other fact's key: a clip's object has one region per frame)."""
    units = {r.unit for r in fact.regions}
    distractors = [
        replace(r, object=other.key)
        for other in scene.facts
        if other.key != fact.key
        for r in other.regions
        if r.unit in units
    ]
    return Sample(
        id=sample_id,
        units=scene.units,
        question=fact.question,
        answer=fact.answer,
        regions=list(fact.regions),
        distractors=distractors,
        meta={"domain": scene.domain, "target": fact.key, **(meta or {})},
    )


def make_sample(domain: str, seed: int, index: int, split: str = "eval") -> Sample:
    """One question per generated input: the index-th sample of a domain for a seed."""
    scene = make_scene(domain, seed, index, split)
    pick = _rng(domain, seed, index, split, stream=1).integers(len(scene.facts))
    return scene_sample(scene, scene.facts[int(pick)], f"{domain}-s{seed}-{index:05d}", {"seed": seed})


def generate(domain: str, n: int, seed: int = 0, split: str = "eval") -> Iterator[Sample]:
    """n samples of one domain (or of each domain in turn for domain='all')."""
    domains = DOMAINS if domain == "all" else (domain,)
    for i in range(n):
        yield make_sample(domains[i % len(domains)], seed, i, split)

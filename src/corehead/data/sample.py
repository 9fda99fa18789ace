"""Grounded samples: the one data model every source (synthetic, user JSONL, public datasets) produces.

A `Sample` holds visual units (images, document pages or video frames), a question, its answer, and the
regions that hold the evidence. Boxes are (x0, y0, x1, y1) in the unit's own pixels; `box=None` is the
whole unit. The JSONL format (one object per line, image paths relative to the file) is documented in
docs/data-format.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

UnitKind = Literal["image", "page", "frame"]
UNIT_KINDS: tuple[str, ...] = ("image", "page", "frame")
Box = tuple[float, float, float, float]


class SampleError(ValueError):
    """A sample that cannot be used; the message names the sample id and the field, and `about` what a user
    searches the source by when the id does not say it (a document question's doc_id and question)."""

    def __init__(self, sample_id: str, field_name: str, problem: str, where: str = "", about: str = "") -> None:
        self.sample_id = sample_id
        self.field = field_name
        self.problem = problem
        self.where = where
        self.about = about
        prefix = f"{where}: " if where else ""
        named = f" ({about})" if about else ""
        super().__init__(f"{prefix}sample {sample_id!r}{named}: field {field_name!r}: {problem}")

    @classmethod
    def of(cls, sample: Sample, field_name: str, problem: str, where: str = "") -> SampleError:
        """The error of a built sample, named as `describe` names it."""
        return cls(sample.id, field_name, problem, where, describe(sample))

    def named(self, about: str) -> SampleError:
        """The same error, also naming the record by `about` (unless it already does)."""
        return self if self.about else SampleError(self.sample_id, self.field, self.problem, self.where, about)


def describe(sample: Sample) -> str:
    """What a user searches a sample's source by, beside its id: for a document question (meta `doc`) the
    document and the question; '' for other samples, whose ids name their record."""
    doc = sample.meta.get("doc")
    return "" if doc is None else record_label(doc, sample.question)


def record_label(doc: Any, question: Any, key: str = "doc") -> str:
    """The words naming a record in an error: KEY 'X', question 'Y' (a long question cut to 80 characters)."""
    text = str(question)
    short = text if len(text) <= 80 else text[:77] + "..."
    return f"{key} {str(doc)!r}, question {short!r}"


@dataclass(frozen=True)
class Region:
    """Evidence inside one unit: a pixel box, or the whole unit when `box` is None. `object` names the object
    a distractor region belongs to: the regions of one object (its box on each frame of a clip) share it, so
    distractor mass is a mean over objects; a region without one is an object of its own."""

    unit: int
    box: Box | None = None
    object: str | None = None


def objects(regions: list[Region]) -> list[list[int]]:
    """Indices of `regions` grouped by object, in order of first appearance; a region without `object` alone."""
    groups: dict[Any, list[int]] = {}
    for k, region in enumerate(regions):
        groups.setdefault(k if region.object is None else region.object, []).append(k)
    return list(groups.values())


@dataclass
class VisualUnit:
    """One image, document page or video frame, as the model will be fed it.

    `source` is a file path (absolute once loaded) or a descriptive id for in-memory images; `image`
    holds the pixels when they were generated rather than read from a file; `render` makes them on demand
    (a PDF page rendered, a JPEG decoded from a parquet row) so a long document is not held in memory.
    """

    kind: UnitKind
    source: str
    width: int
    height: int
    page: int | None = None
    frame: int | None = None
    timestamp: float | None = None
    image: Image.Image | None = field(default=None, repr=False, compare=False)
    render: Callable[[], Image.Image] | None = field(default=None, repr=False, compare=False)

    def load(self) -> Image.Image:
        """The unit's pixels as an RGB image, checked against the declared size (boxes are in those pixels)."""
        if self.image is not None:
            image = self.image.convert("RGB")
        elif self.render is not None:
            image = self.render().convert("RGB")
        else:
            with Image.open(self.source) as img:
                image = img.convert("RGB")
        if min(image.size) < 1:
            raise ValueError(f"image {self.source!r} is empty ({image.width}x{image.height} px)")
        if image.size != (self.width, self.height):
            raise ValueError(
                f"image {self.source!r} is {image.width}x{image.height} px but its unit says {self.width}x{self.height}"
            )
        return image


@dataclass
class Sample:
    """A question about visual units, its answer, and where the answer can be read."""

    id: str
    units: list[VisualUnit]
    question: str
    answer: str
    regions: list[Region]
    distractors: list[Region] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        """The sample's domain (e.g. scenes, pages, clips), or 'custom' when the source does not say."""
        return str(self.meta.get("domain", "custom"))


def validate(sample: Sample, require_answer: bool = True, where: str = "", require_region: bool = True) -> None:
    """Raise SampleError naming the sample and field if the sample cannot be used.

    `require_region=False` admits samples without evidence regions (datasets with none, e.g. MLVU): they
    can be answered (eval, accelerate) but not scored for RAM.
    """
    sid = sample.id

    def fail(field_name: str, problem: str) -> None:
        raise SampleError(sid, field_name, problem, where, describe(sample))

    if not str(sid).strip():
        fail("id", "empty id")
    if not sample.units:
        fail("units", "a sample needs at least one visual unit")
    for i, unit in enumerate(sample.units):
        name = f"units[{i}]"
        if unit.kind not in UNIT_KINDS:
            fail(f"{name}.kind", f"{unit.kind!r} is not one of {', '.join(UNIT_KINDS)}")
        if unit.width <= 0 or unit.height <= 0:
            fail(f"{name}.width/height", f"size must be positive, got {unit.width}x{unit.height}")
        if unit.kind == "page" and (unit.page is None or unit.page < 1):
            fail(f"{name}.page", "a page unit needs its 1-based page number")
        if unit.kind == "frame":
            if unit.frame is None or unit.frame < 0:
                fail(f"{name}.frame", "a frame unit needs its 0-based frame index")
            if unit.timestamp is None or not math.isfinite(unit.timestamp) or unit.timestamp < 0:
                fail(f"{name}.timestamp", "a frame unit needs a timestamp in seconds >= 0")
    if not sample.question.strip():
        fail("question", "empty question")
    if require_answer and not sample.answer.strip():
        fail("answer", "empty answer")
    if require_region and not sample.regions:
        fail("regions", "a grounded sample needs at least one region")
    for group in ("regions", "distractors"):
        for j, region in enumerate(getattr(sample, group)):
            _check_region(sample, region, f"{group}[{j}]", fail)


def _check_region(sample: Sample, region: Region, name: str, fail: Any) -> None:
    if region.object is not None and (not isinstance(region.object, str) or not region.object.strip()):
        fail(f"{name}.object", f"an object id is a non-empty string, got {region.object!r}")
    if not 0 <= region.unit < len(sample.units):
        fail(f"{name}.unit", f"unit {region.unit} does not exist (the sample has {len(sample.units)} units)")
    if region.box is None:
        return
    if len(region.box) != 4 or not all(math.isfinite(v) for v in region.box):
        fail(f"{name}.box", f"a box is 4 finite numbers [x0, y0, x1, y1], got {list(region.box)}")
    x0, y0, x1, y1 = region.box
    if x1 <= x0 or y1 <= y0:
        fail(f"{name}.box", f"empty box {list(region.box)}: needs x1 > x0 and y1 > y0")
    unit = sample.units[region.unit]
    if x0 < 0 or y0 < 0 or x1 > unit.width or y1 > unit.height:
        fail(
            f"{name}.box",
            f"box {list(region.box)} lies outside unit {region.unit} ({unit.width}x{unit.height} px)",
        )


# ---------------------------------------------------------------------------------------------- JSONL


def region_to_json(region: Region) -> dict[str, Any]:
    out: dict[str, Any] = {"unit": region.unit, "box": None if region.box is None else [float(v) for v in region.box]}
    if region.object is not None:
        out["object"] = region.object
    return out


def unit_to_json(unit: VisualUnit, base: Path | None = None) -> dict[str, Any]:
    source = unit.source
    if base is not None and unit.image is None:
        path = Path(source)
        if path.is_absolute() and path.is_relative_to(base.resolve()):
            source = path.relative_to(base.resolve()).as_posix()
    out: dict[str, Any] = {"kind": unit.kind, "source": source, "width": unit.width, "height": unit.height}
    if unit.kind == "page":
        out["page"] = unit.page
    if unit.kind == "frame":
        out["frame"] = unit.frame
        out["timestamp"] = unit.timestamp
    return out


def sample_to_json(sample: Sample, base: Path | None = None) -> dict[str, Any]:
    """The sample as one JSON object; file sources are made relative to `base` when below it."""
    out: dict[str, Any] = {
        "id": sample.id,
        "units": [unit_to_json(u, base) for u in sample.units],
        "question": sample.question,
        "answer": sample.answer,
        "regions": [region_to_json(r) for r in sample.regions],
        "distractors": [region_to_json(r) for r in sample.distractors],
    }
    if sample.meta:
        out["meta"] = sample.meta
    return out


def sample_from_json(obj: Any, base: Path, where: str = "", require_answer: bool = True) -> Sample:
    """Parse and validate one JSON object; image paths are resolved against `base` and opened."""
    raw_id = obj.get("id") if isinstance(obj, dict) else None
    sid = "" if raw_id is None else str(raw_id).strip()
    if not isinstance(obj, dict):
        raise SampleError(sid, "<line>", f"expected a JSON object, got {type(obj).__name__}", where)

    def need(mapping: dict[str, Any], key: str, name: str) -> Any:
        if key not in mapping or mapping[key] is None:
            raise SampleError(sid, name, "missing", where)
        return mapping[key]

    if not sid:
        raise SampleError(sid, "id", "missing", where)
    raw_units = need(obj, "units", "units")
    if not isinstance(raw_units, list):
        raise SampleError(sid, "units", "must be a list", where)
    units = [_unit_from_json(u, i, sid, base, where) for i, u in enumerate(raw_units)]
    parsed: dict[str, list[Region]] = {}
    for group, raw in (("regions", need(obj, "regions", "regions")), ("distractors", obj.get("distractors") or [])):
        if not isinstance(raw, list):
            raise SampleError(sid, group, "must be a list of regions", where)
        parsed[group] = []
        for k, r in enumerate(raw):
            try:
                parsed[group].append(_region_from_json(r))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise SampleError(sid, f"{group}[{k}]", f"malformed region ({exc})", where) from None
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise SampleError(sid, "meta", "must be an object", where)
    sample = Sample(
        id=sid,
        units=units,
        question=str(need(obj, "question", "question")),
        answer=str(obj.get("answer") or ""),
        regions=parsed["regions"],
        distractors=parsed["distractors"],
        meta=dict(meta),
    )
    validate(sample, require_answer=require_answer, where=where)
    return sample


def _region_from_json(raw: Any) -> Region:
    if not isinstance(raw, dict):
        raise TypeError(f"a region is an object with 'unit' and 'box' (and optionally 'object'), got {raw!r}")
    box = raw.get("box")
    obj = raw.get("object")
    if obj is not None and not isinstance(obj, str | int):
        raise TypeError(f"a region's 'object' is a string (or an integer id), got {obj!r}")
    return Region(
        unit=int(raw["unit"]),
        box=None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
        object=None if obj is None else str(obj),
    )


def _unit_from_json(raw: Any, i: int, sid: str, base: Path, where: str) -> VisualUnit:
    name = f"units[{i}]"
    if not isinstance(raw, dict):
        raise SampleError(sid, name, "must be an object", where)
    kind = raw.get("kind", "image")
    if kind not in UNIT_KINDS:
        raise SampleError(sid, f"{name}.kind", f"{kind!r} is not one of {', '.join(UNIT_KINDS)}", where)
    source = raw.get("source")
    if not source:
        raise SampleError(sid, f"{name}.source", "missing", where)
    path = Path(source) if Path(source).is_absolute() else base / source
    try:
        with Image.open(path) as img:
            width, height = img.size
            img.verify()  # catches truncated or corrupt files now, not mid-run
    except FileNotFoundError:
        raise SampleError(sid, f"{name}.source", f"image file not found: {path}", where) from None
    except OSError as exc:
        raise SampleError(sid, f"{name}.source", f"unreadable image {path}: {exc}", where) from None

    def number(key: str, cast: type) -> Any:
        if raw.get(key) is None:
            return None
        try:
            return cast(raw[key])
        except (TypeError, ValueError):
            raise SampleError(sid, f"{name}.{key}", f"must be a number, got {raw[key]!r}", where) from None

    for key, actual in (("width", width), ("height", height)):
        given = number(key, int)
        if given is not None and given != actual:
            raise SampleError(sid, f"{name}.{key}", f"says {given} but the image {path} has {key} {actual}", where)
    return VisualUnit(
        kind=kind,
        source=str(path.resolve()),
        width=width,
        height=height,
        page=number("page", int),
        frame=number("frame", int),
        timestamp=number("timestamp", float),
    )


@dataclass
class LoadReport:
    """What a tolerant load skipped, and why."""

    skipped: list[str] = field(default_factory=list)


def json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """(file:line, parsed object) per non-empty line of a JSONL file; a line that is not JSON comes as a
    SampleError naming it, so a caller can raise it or skip it and go on."""
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{line_no}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, SampleError("?", "<line>", f"invalid JSON ({exc.msg})", where)


def read_jsonl(
    path: Path, skip_invalid: bool = False, report: LoadReport | None = None, require_answer: bool = True
) -> Iterator[Sample]:
    """Samples from a JSONL file. A bad line raises SampleError unless `skip_invalid`, which records it."""
    base = path.parent
    for where, obj in json_lines(path):
        try:
            if isinstance(obj, SampleError):
                raise obj
            yield sample_from_json(obj, base, where, require_answer=require_answer)
        except SampleError as exc:
            if not skip_invalid:
                raise
            if report is not None:
                report.skipped.append(str(exc))


def write_jsonl(samples: Iterable[Sample], out_dir: Path, name: str = "samples.jsonl") -> Path:
    """Write samples to out_dir/name; in-memory and rendered images are saved as PNGs under out_dir/images/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = out_dir / "images"
    target = out_dir / name
    with target.open("w", encoding="utf-8") as handle:
        for sample in samples:
            units = []
            for k, unit in enumerate(sample.units):
                if unit.image is not None or unit.render is not None:
                    images.mkdir(exist_ok=True)
                    file = images / f"{_safe(sample.id)}_{k}.png"
                    unit.load().save(file)
                    unit = replace(unit, source=str(file.resolve()), image=None, render=None)
                units.append(unit)
            handle.write(json.dumps(sample_to_json(replace(sample, units=units), out_dir)) + "\n")
    return target


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

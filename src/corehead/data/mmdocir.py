"""MMDocIR (evaluation set): one grounded sample per question, pages from the parquet, layout boxes as regions.

The release unpacks as ROOT/MMDocIR_annotations.jsonl (one line per document: `doc_name`, `page_indices`
[first, last] rows of the pages parquet, `questions` with `Q`, `A`, `page_id` (0-based), `type` and
`layout_mapping` boxes in PDF points of `page_size`) and ROOT/MMDocIR_pages.parquet (one row per page,
`image_binary` a JPEG). The pages file is 2.4 GB: only its `doc_name` column is read whole, and only the
rows a sample needs of `image_binary`, kept as JPEG bytes and decoded when the unit is loaded.

Options: see OPTIONS. MMLongBench-Doc reuses the box matching here (`question_index`, `layouts`).
"""

from __future__ import annotations

import ast
import bisect
import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import takewhile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from corehead.data import check_options
from corehead.data.public import field, samples, seeded
from corehead.data.sample import Box, Region, Sample, SampleError, VisualUnit, json_lines

ANNOTATIONS = "MMDocIR_annotations.jsonl"
PAGES = "MMDocIR_pages.parquet"
OPTIONS = {
    "pages": "evidence (default: the question's evidence pages) or all (the whole document, up to max_pages)",
    "max_pages": "most pages of one document kept with pages=all (default 50)",
    "page_regions": "1: also count each evidence page as a whole-page region (default 0)",
}
OVERSHOOT = 0.01  # share of the page side a layout box may stick out (annotation rounding); it is clipped
_BATCH = 16  # parquet rows decoded at a time while looking for a sample's pages
_BUFFER = 8 << 20  # stream column chunks in 8 MiB reads instead of whole (a row group may hold every page)


def need_file(root: Path, name: str, dataset: str) -> Path:
    """root / name, or FileNotFoundError saying which file of the release is missing."""
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: no {name} in {root} (unpack the release there as published)")
    return path


def int_option(options: dict[str, str], key: str, default: int, dataset: str) -> int:
    """A positive integer option, or ValueError naming it."""
    raw = options.get(key, str(default))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{dataset}: option {key} must be a positive integer, got {raw!r}")
    return int(raw)


def choice_option(options: dict[str, str], key: str, choices: tuple[str, ...], dataset: str) -> str:
    """An option that takes one of `choices` (the first is the default), or ValueError naming it."""
    value = options.get(key, choices[0])
    if value not in choices:
        raise ValueError(f"{dataset}: option {key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def question_key(doc_name: str, question: str) -> tuple[str, str]:
    """How a question is matched across datasets: document name without .pdf, question text in lower case
    with whitespace collapsed."""
    name = doc_name[:-4] if doc_name.lower().endswith(".pdf") else doc_name
    return name, " ".join(question.split()).lower()


def documents(path: Path) -> Iterator[tuple[str, dict[str, Any] | SampleError]]:
    """(where, document) per line of the annotations file; a line that is not a usable document (bad JSON,
    no doc_name or questions) comes as its SampleError so the caller can raise or skip it."""
    for where, doc in json_lines(path):
        try:
            if isinstance(doc, SampleError):
                raise doc
            name = field(doc, "doc_name", "?", where, str)
            field(doc, "questions", f"mmdocir-{name}", where, list)
        except SampleError as error:
            yield where, error
            continue
        yield where, doc


def question_index(root: Path, skip: Callable[[SampleError], None] | None) -> dict[tuple[str, str], tuple[str, Any]]:
    """MMDocIR's questions by `question_key`, each with where it was read; unusable lines raise or go to skip."""
    index: dict[tuple[str, str], tuple[str, Any]] = {}
    for where, doc in documents(need_file(root, ANNOTATIONS, "mmdocir")):
        if isinstance(doc, SampleError):
            if skip is None:
                raise doc
            skip(doc)
            continue
        for question in doc["questions"]:
            if isinstance(question, dict) and isinstance(question.get("Q"), str):
                index[question_key(doc["doc_name"], question["Q"])] = (where, question)
    return index


@dataclass(frozen=True)
class Layout:
    """One evidence box of a question: its 0-based page, in PDF points of that page's `page_size`."""

    name: str  # the field it came from, for errors
    page: int
    page_size: tuple[float, float]
    bbox: Box

    def scaled(self, width: int, height: int, sample_id: str, where: str) -> Box:
        """The box in the pixels of a width x height image of its page; a box that leaves the page by more
        than OVERSHOOT of its side is a SampleError, less is clipped."""
        pw, ph = self.page_size
        x0, y0, x1, y1 = self.bbox
        if min(x0, y0) < -OVERSHOOT * min(pw, ph) or x1 > pw * (1 + OVERSHOOT) or y1 > ph * (1 + OVERSHOOT):
            raise SampleError(
                sample_id, f"{self.name}.bbox", f"box {list(self.bbox)} lies outside its page ({pw} x {ph} pt)", where
            )
        sx, sy = width / pw, height / ph
        return (max(0.0, x0 * sx), max(0.0, y0 * sy), min(float(width), x1 * sx), min(float(height), y1 * sy))


def layouts(question: Any, sample_id: str, where: str) -> list[Layout]:
    """The question's `layout_mapping` as checked Layouts (none when it has no such field)."""
    out = []
    for k, raw in enumerate(question.get("layout_mapping") or []):
        name = f"layout_mapping[{k}]"
        page = field(raw, "page", sample_id, where, int)
        size = field(raw, "page_size", sample_id, where, list)
        box = field(raw, "bbox", sample_id, where, list)
        if len(size) != 2 or not all(isinstance(v, int | float) and v > 0 for v in size):
            raise SampleError(sample_id, f"{name}.page_size", f"expected [width, height] > 0, got {size}", where)
        if len(box) != 4 or not all(isinstance(v, int | float) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
            raise SampleError(
                sample_id, f"{name}.bbox", f"expected [x1, y1, x2, y2] with x2 > x1, y2 > y1: {box}", where
            )
        if page < 0:
            raise SampleError(sample_id, f"{name}.page", f"page {page} is negative (pages are 0-based)", where)
        out.append(Layout(name, page, (float(size[0]), float(size[1])), tuple(float(v) for v in box)))  # type: ignore[arg-type]
    return out


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


class _Pages:
    """MMDocIR_pages.parquet read by need: the doc_name column once, then only the image rows asked for."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = pq.ParquetFile(path, buffer_size=_BUFFER)
        self.names: list[str] = self.file.read(columns=["doc_name"]).column("doc_name").to_pylist()
        counts = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = [sum(counts[:g]) for g in range(len(counts))]

    def rows(self, doc: dict[str, Any], sample_id: str, where: str) -> list[int]:
        """The parquet rows of the document's pages, in page order: from the first row of `page_indices`
        while the rows are its pages (so an inclusive and an exclusive end both work)."""
        span = field(doc, "page_indices", sample_id, where, list)
        name = doc["doc_name"]
        if len(span) != 2 or not all(isinstance(v, int) for v in span) or not 0 <= span[0] <= span[1]:
            raise SampleError(sample_id, "page_indices", f"expected [first, last] row numbers, got {span}", where)
        first, last = span
        if first >= len(self.names) or self.names[first] != name:
            found = repr(self.names[first]) if first < len(self.names) else "past the end"
            raise SampleError(
                sample_id, "page_indices", f"row {first} of {PAGES} is not a page of {name!r} ({found})", where
            )
        return list(takewhile(lambda r: self.names[r] == name, range(first, min(last + 1, len(self.names)))))

    def images(self, rows: list[int]) -> dict[int, bytes]:
        """JPEG bytes of the given rows: each row group involved is streamed up to its last wanted row."""
        wanted = set(rows)
        out: dict[int, bytes] = {}
        for group in sorted({bisect.bisect_right(self.starts, r) - 1 for r in wanted}):
            offset = self.starts[group]
            last = max(r for r in wanted if bisect.bisect_right(self.starts, r) - 1 == group)
            batches = self.file.iter_batches(batch_size=_BATCH, row_groups=[group], columns=["image_binary"])
            for batch in batches:
                column = batch.column(0)
                for r in wanted.intersection(range(offset, offset + batch.num_rows)):
                    out[r] = column[r - offset].as_py()
                offset += batch.num_rows
                if offset > last:
                    break
        return out

    def unit(self, row: int, data: bytes | None, page: int, sample_id: str) -> VisualUnit:
        """A page unit of known size (read from the JPEG header) that decodes its bytes when loaded."""
        source = f"{self.path}#row={row}"
        try:
            if data is None:
                raise OSError("no image_binary")
            with _decode(data) as image:
                width, height = image.size
        except OSError as exc:
            raise SampleError(sample_id, "image_binary", f"unreadable page image {source}: {exc}", PAGES) from None
        return VisualUnit("page", source, width, height, page=page, render=partial(_decode, data))


def _types(raw: Any) -> list[str]:
    """The question's `type`: a string holding a Python list ("['Chart']"), a plain string, or a list."""
    if isinstance(raw, str) and raw.startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            raw = ast.literal_eval(raw)
    return [str(t) for t in raw] if isinstance(raw, list) else [] if raw is None else [str(raw)]


def load(
    root: Path, options: dict[str, str], seed: int = 0, skip: Callable[[SampleError], None] | None = None
) -> Iterator[Sample]:
    """MMDocIR questions in a seeded order (see the module docstring)."""
    check_options("mmdocir", options, OPTIONS)
    whole = choice_option(options, "pages", ("evidence", "all"), "mmdocir") == "all"
    max_pages = int_option(options, "max_pages", 50, "mmdocir")
    page_regions = choice_option(options, "page_regions", ("0", "1"), "mmdocir") == "1"
    items: list[tuple[str, dict[str, Any], int] | SampleError] = []
    for where, doc in documents(need_file(root, ANNOTATIONS, "mmdocir")):
        items.extend([doc] if isinstance(doc, SampleError) else [(where, doc, i) for i in range(len(doc["questions"]))])
    pages = _Pages(need_file(root, PAGES, "mmdocir"))

    def make(item: tuple[str, dict[str, Any], int] | SampleError) -> Sample:
        if isinstance(item, SampleError):
            raise item
        where, doc, index = item
        sid = f"mmdocir-{doc['doc_name']}-{index}"
        question = doc["questions"][index]
        text = field(question, "Q", sid, where, str)
        answer = str(field(question, "A", sid, where, (str, int, float)))
        rows = pages.rows(doc, sid, where)
        evidence = field(question, "page_id", sid, where, list)
        boxes = layouts(question, sid, where)
        for name, page in [("page_id", p) for p in evidence] + [(f"{b.name}.page", b.page) for b in boxes]:
            if not isinstance(page, int) or not 0 <= page < len(rows):
                raise SampleError(sid, name, f"page {page} is outside the document (pages 0-{len(rows) - 1})", where)
        shown = list(range(min(len(rows), max_pages))) if whole else sorted({*evidence, *(b.page for b in boxes)})
        beyond = sorted({*evidence, *(b.page for b in boxes)} - set(shown))
        if beyond:
            raise SampleError(sid, "page_id", f"evidence page {beyond[0]} is beyond max_pages={max_pages}", where)
        data = pages.images([rows[p] for p in shown])
        units = [pages.unit(rows[p], data[rows[p]], p + 1, sid) for p in shown]
        position = {page: i for i, page in enumerate(shown)}
        regions = [
            Region(
                position[b.page], b.scaled(units[position[b.page]].width, units[position[b.page]].height, sid, where)
            )
            for b in boxes
        ]
        regions += [Region(position[p]) for p in evidence] if page_regions else []
        if not regions:
            raise SampleError(sid, "layout_mapping", "no layout boxes (page_regions=1 uses the evidence pages)", where)
        meta = {"domain": "mmdocir", "task": "exact", "doc": doc["doc_name"], "types": _types(question.get("type"))}
        return Sample(sid, units, text, answer, regions, meta=meta)

    yield from samples(seeded(items, seed), make, skip, where=ANNOTATIONS)

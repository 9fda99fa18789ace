"""MMLongBench-Doc: one sample per question, PDF pages rendered on demand, evidence pages as regions.

The release unpacks as ROOT/samples.json (a list of `doc_id`, `doc_type`, `question`, `answer`,
`evidence_pages` and `evidence_sources`, both strings holding Python lists, and `answer_format`) and
ROOT/documents/<doc_id> (the PDFs). Pages are 1-based. Units are the document's first `max_pages` pages,
rendered with pypdfium2 at `dpi` when loaded; their size is declared from the PDF's page size, rounded up
as pypdfium2 rounds. Unanswerable questions ("Not answerable", no evidence pages) load without a region:
they can be answered (eval, accelerate) but not scored for RAM.

With `mmdocir=PATH` (an MMDocIR root) the regions are MMDocIR's layout boxes for the same question
(matched by document name and question text), and only the questions MMDocIR has are loaded.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import partial
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
from PIL import Image

from corehead.data import check_options
from corehead.data.mmdocir import int_option, layouts, need_file, question_index, question_key
from corehead.data.public import field, inside, samples, seeded
from corehead.data.sample import Region, Sample, SampleError, VisualUnit, record_label

SAMPLES = "samples.json"
OPTIONS = {
    "dpi": "resolution the PDF pages are rendered at (default 144)",
    "max_pages": "most pages of a document kept (default 50); an evidence page beyond them is an error",
    "mmdocir": "an MMDocIR root: use its layout boxes as regions (only the questions it has are loaded)",
}


def _render(pdf: Path, index: int, scale: float) -> Image.Image:
    document = pdfium.PdfDocument(pdf)
    try:
        return document[index].render(scale=scale).to_pil().convert("RGB")  # a copy that outlives the document
    finally:
        document.close()


def _literal_list(row: Any, key: str, sample_id: str, where: str) -> list[Any]:
    """A field holding a list, written as the string of a Python list ("[19, 20]") as in the release."""
    raw = field(row, key, sample_id, where, (str, list))
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise SampleError(sample_id, key, f"expected a list such as [1, 2], got {raw!r}", where) from None
    if not isinstance(raw, list):
        raise SampleError(sample_id, key, f"expected a list, got {raw!r}", where)
    return raw


def _read_rows(root: Path) -> list[Any]:
    """The release's list of questions (samples.json)."""
    path = need_file(root, SAMPLES, "mmlongbench-doc")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of questions, got {type(rows).__name__}")
    return rows


@dataclass
class _Reader:
    """Makes the samples of one load: PDFs rendered at `scale`, their first `max_pages` pages kept; with an
    MMDocIR `index`, only its questions, with its layout boxes as regions."""

    root: Path
    scale: float
    max_pages: int
    index: dict[tuple[str, str], tuple[str, Any]] | None
    sizes: dict[Path, tuple[int, list[tuple[int, int]]]] = dc_field(default_factory=dict)

    def pages(self, pdf: Path) -> tuple[int, list[tuple[int, int]]]:
        """The document's page count and the pixel sizes of its kept pages (read once per document)."""
        if pdf not in self.sizes:
            document = pdfium.PdfDocument(pdf)
            try:
                kept = [document.get_page_size(k) for k in range(min(len(document), self.max_pages))]
                pixels = [(math.ceil(w * self.scale), math.ceil(h * self.scale)) for w, h in kept]
                self.sizes[pdf] = len(document), pixels
            finally:
                document.close()
        return self.sizes[pdf]

    def sample(self, item: tuple[int, Any]) -> Sample | None:
        """The sample of the i-th question (None: MMDocIR does not have it); an error names the record by its
        doc_id and question as well as its index in samples.json."""
        i, row = item
        try:
            return self._sample(i, row)
        except SampleError as error:
            known = row if isinstance(row, dict) else {}
            raise error.named(record_label(known.get("doc_id", "?"), known.get("question", "?"), "doc_id")) from None

    def _sample(self, i: int, row: Any) -> Sample | None:
        sid, where = f"mmlongbench-doc-{i}", f"{SAMPLES}[{i}]"
        doc_id = field(row, "doc_id", sid, where, str)
        question = field(row, "question", sid, where, str)
        answer = str(field(row, "answer", sid, where, (str, int, float)))
        answer_format = field(row, "answer_format", sid, where, str)
        evidence = _literal_list(row, "evidence_pages", sid, where)
        sources = _literal_list(row, "evidence_sources", sid, where) if "evidence_sources" in row else []
        match = None if self.index is None else self.index.get(question_key(doc_id, question))
        if self.index is not None and match is None:
            return None
        pdf = inside(self.root / "documents", doc_id, sid, "doc_id", where)
        try:
            total, kept = self.pages(pdf)
        except pdfium.PdfiumError as exc:
            raise SampleError(sid, "doc_id", f"unreadable PDF {pdf}: {exc}", where) from None
        for page in evidence:
            if not isinstance(page, int) or not 1 <= page <= total:
                raise SampleError(
                    sid, "evidence_pages", f"page {page} is outside the document (pages 1-{total})", where
                )
            if page > len(kept):
                raise SampleError(sid, "evidence_pages", f"page {page} is beyond max_pages={self.max_pages}", where)
        units = [
            VisualUnit("page", f"{pdf}#page={k + 1}", w, h, page=k + 1, render=partial(_render, pdf, k, self.scale))
            for k, (w, h) in enumerate(kept)
        ]
        regions = (
            [Region(page - 1) for page in sorted(set(evidence))]
            if match is None
            else _layout_regions(match, units, sid)
        )
        meta = {
            "domain": "mmlongbench-doc",
            "task": "mmlongbench",
            "answer_format": answer_format,
            "doc": doc_id,
            "doc_type": row.get("doc_type"),
            "sources": [str(s) for s in sources],
        }
        return Sample(sid, units, question, answer, regions, meta=meta)


def _layout_regions(match: tuple[str, Any], units: list[VisualUnit], sid: str) -> list[Region]:
    """MMDocIR's layout boxes of the matched question as regions on the kept pages."""
    mmdocir_where, mmdocir_question = match
    regions = []
    for box in layouts(mmdocir_question, sid, mmdocir_where):
        if box.page >= len(units):
            problem = f"MMDocIR page {box.page} (page {box.page + 1}) is not among the {len(units)} kept pages"
            raise SampleError(sid, f"{box.name}.page", problem, mmdocir_where)
        unit = units[box.page]
        regions.append(Region(box.page, box.scaled(unit.width, unit.height, sid, mmdocir_where)))
    return regions


def load(
    root: Path, options: dict[str, str], seed: int = 0, skip: Callable[[SampleError], None] | None = None
) -> Iterator[Sample]:
    """MMLongBench-Doc questions in a seeded order (see the module docstring)."""
    check_options("mmlongbench-doc", options, OPTIONS)
    scale = int_option(options, "dpi", 144, "mmlongbench-doc") / 72
    max_pages = int_option(options, "max_pages", 50, "mmlongbench-doc")
    index = question_index(Path(options["mmdocir"]), skip) if "mmdocir" in options else None
    reader = _Reader(root, scale, max_pages, index)
    rows = _read_rows(root)
    yield from samples(seeded(list(enumerate(rows)), seed), reader.sample, skip, where=SAMPLES, require_region=False)

"""Document datasets: MMDocIR and MMLongBench-Doc loaders on fixtures in their release formats, the
MMLongBench-Doc answer score, and both datasets through `data show`, `score` and `ablate`."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pytest
from helpers import by_id, invoke
from PIL import Image

from corehead.data import LoadReport, load_dataset
from corehead.data import mmdocir as mmdocir_module
from corehead.data.sample import Region, SampleError
from corehead.metrics.mmlongbench import extract, score
from corehead.metrics.tasks import score_answer

# ------------------------------------------------------------------------------------------- MMDocIR

# doc name -> (page image size in px, page size in PDF points, page colours); "zeta" has no questions and
# sits first in the pages file so that page_indices do not start at row 0
PAGES: dict[str, tuple[tuple[int, int], list[float], list[tuple[int, int, int]]]] = {
    "zeta": ((200, 260), [100.0, 130.0], [(0, 0, 0), (255, 255, 255)]),
    "alpha": ((200, 260), [100.0, 130.0], [(255, 0, 0), (0, 255, 0), (0, 0, 255)]),
    "beta": ((160, 200), [80.0, 100.0], [(255, 255, 0), (0, 255, 255)]),
}


def layout(page: int, doc: str, bbox: list[float]) -> dict[str, Any]:
    return {"page": page, "page_size": PAGES[doc][1], "bbox": bbox}


def mmdocir_docs() -> list[dict[str, Any]]:
    """Annotation lines as the release writes them (with its `layout_indinces` spelling)."""
    return [
        {
            "doc_name": "alpha",
            "domain": "Research report",
            "page_indices": [2, 4],
            "layout_indinces": [0, 9],
            "questions": [
                {
                    "Q": "What is the revenue?",
                    "A": "12",
                    "page_id": [1],
                    "type": "['Chart']",
                    "layout_mapping": [layout(1, "alpha", [10, 20, 50, 65])],
                },
                {
                    "Q": "Who wrote it?",
                    "A": "Ann",
                    "page_id": [0, 2],
                    "type": "['Pure-text (Plain-text)', 'Table']",
                    "layout_mapping": [layout(0, "alpha", [0, 0, 100, 130]), layout(2, "alpha", [5, 5, 25, 25])],
                },
            ],
        },
        {
            "doc_name": "beta",
            "domain": "Brochure",
            "page_indices": [5, 6],
            "layout_indinces": [10, 12],
            "questions": [
                {
                    "Q": "Which year?",
                    "A": "2020",
                    "page_id": [0],
                    "type": "['Table']",
                    "layout_mapping": [layout(0, "beta", [8, 10, 40, 50])],
                }
            ],
        },
    ]


def jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_mmdocir(root: Path, docs: list[dict[str, Any]] | None = None, lines: list[str] | None = None) -> Path:
    """An MMDocIR root: annotations (docs as JSON lines, then raw `lines`), pages parquet in row groups of 2,
    layouts parquet."""
    root.mkdir(parents=True, exist_ok=True)
    text = [json.dumps(d) for d in (mmdocir_docs() if docs is None else docs)] + (lines or [])
    (root / "MMDocIR_annotations.jsonl").write_text("\n".join(text) + "\n", encoding="utf-8")
    rows: dict[str, list[Any]] = {k: [] for k in ("doc_name", "domain", "passage_id", "image_path")}
    rows |= {"image_binary": [], "ocr_text": [], "vlm_text": []}
    for name, (size, _, colours) in PAGES.items():
        for page, colour in enumerate(colours):
            rows["doc_name"].append(name)
            rows["domain"].append("Research report")
            rows["passage_id"].append(str(page))
            rows["image_path"].append(f"images/{name}_{page}.jpg")
            rows["image_binary"].append(jpeg(size, colour))
            rows["ocr_text"].append(f"ocr {name} {page}")
            rows["vlm_text"].append(f"vlm {name} {page}")
    pq.write_table(pa.table(rows), root / "MMDocIR_pages.parquet", row_group_size=2)
    layouts = {
        "doc_name": ["alpha"],
        "domain": ["Research report"],
        "type": ["figure"],
        "layout_id": [0],
        "page_id": [1],
        "image_path": ["layouts/alpha_0.jpg"],
        "image_binary": [jpeg((80, 90), (255, 0, 0))],
        "text": [None],
        "ocr_text": ["chart"],
        "vlm_text": ["a chart"],
        "bbox": [[10, 20, 50, 65]],
        "page_size": [[100.0, 130.0]],
    }
    pq.write_table(pa.table(layouts), root / "MMDocIR_layouts.parquet")
    return root


@pytest.fixture
def mmdocir_root(tmp_path: Path) -> Path:
    return write_mmdocir(tmp_path / "MMDocIR")


def near(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    """JPEG keeps a flat colour within a few levels."""
    pixel = image.getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= 8 for a, b in zip(pixel, colour, strict=True))


def test_mmdocir_samples_have_evidence_pages_and_scaled_layout_boxes(mmdocir_root: Path) -> None:
    samples = by_id(load_dataset(f"mmdocir:{mmdocir_root}"))
    assert sorted(samples) == ["mmdocir-alpha-0", "mmdocir-alpha-1", "mmdocir-beta-0"]
    revenue = samples["mmdocir-alpha-0"]
    assert (revenue.question, revenue.answer) == ("What is the revenue?", "12")
    assert revenue.meta == {"domain": "mmdocir", "task": "exact", "doc": "alpha", "types": ["Chart"]}
    assert [(u.kind, u.page, u.width, u.height) for u in revenue.units] == [("page", 2, 200, 260)]
    assert revenue.regions == [Region(0, (20.0, 40.0, 100.0, 130.0))]  # points x 2 (200 px / 100 pt)
    author = samples["mmdocir-alpha-1"]
    assert [u.page for u in author.units] == [1, 3]
    assert author.regions == [Region(0, (0.0, 0.0, 200.0, 260.0)), Region(1, (10.0, 10.0, 50.0, 50.0))]
    assert author.meta["types"] == ["Pure-text (Plain-text)", "Table"]
    year = samples["mmdocir-beta-0"]
    assert [(u.page, u.width, u.height) for u in year.units] == [(1, 160, 200)]
    assert year.regions == [Region(0, (16.0, 20.0, 80.0, 100.0))]
    # pages are decoded only when loaded, from the right rows
    for sample, colours in ((revenue, [(0, 255, 0)]), (author, [(255, 0, 0), (0, 0, 255)])):
        for unit, colour in zip(sample.units, colours, strict=True):
            assert unit.image is None and unit.render is not None
            image = unit.load()
            assert image.size == (unit.width, unit.height) and near(image, colour)


def test_mmdocir_whole_documents_page_regions_and_page_cap(mmdocir_root: Path) -> None:
    spec = f"mmdocir:{mmdocir_root}?pages=all"
    revenue = by_id(load_dataset(spec))["mmdocir-alpha-0"]
    assert [u.page for u in revenue.units] == [1, 2, 3]
    assert revenue.regions == [Region(1, (20.0, 40.0, 100.0, 130.0))]
    assert near(revenue.units[2].load(), (0, 0, 255))
    paged = by_id(load_dataset(f"mmdocir:{mmdocir_root}?page_regions=1"))["mmdocir-alpha-1"]
    assert paged.regions[2:] == [Region(0), Region(1)]
    with pytest.raises(SampleError, match=r"mmdocir-alpha-1.*'page_id'.*beyond max_pages=2"):
        load_dataset(f"{spec}&max_pages=2")


def test_mmdocir_order_is_seeded_and_limit_is_a_subsample(mmdocir_root: Path) -> None:
    spec = f"mmdocir:{mmdocir_root}"
    orders = {seed: [s.id for s in load_dataset(spec, seed=seed)] for seed in range(6)}
    assert all(sorted(o) == sorted(orders[0]) for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 1
    assert [s.id for s in load_dataset(spec, seed=3)] == orders[3]
    assert [s.id for s in load_dataset(spec, n=2, seed=3)] == orders[3][:2]


def test_mmdocir_reads_only_the_columns_and_rows_it_needs(mmdocir_root: Path, monkeypatch: Any) -> None:
    requests: list[tuple[tuple[str, ...], int]] = []

    class Recording(pq.ParquetFile):
        def read(self, columns: Any = None, **kwargs: Any) -> Any:
            table = super().read(columns=columns, **kwargs)
            requests.append((tuple(columns), table.num_rows))
            return table

        def iter_batches(self, batch_size: int = 65536, row_groups: Any = None, columns: Any = None, **kw: Any) -> Any:
            for batch in super().iter_batches(batch_size=batch_size, row_groups=row_groups, columns=columns, **kw):
                requests.append((tuple(columns), batch.num_rows))
                yield batch

    monkeypatch.setattr(mmdocir_module.pq, "ParquetFile", Recording)
    [sample] = load_dataset(f"mmdocir:{mmdocir_root}", n=1)
    assert requests[0] == (("doc_name",), 7)
    assert {columns for columns, _ in requests[1:]} == {("image_binary",)}
    assert sum(n for _, n in requests[1:]) <= 2 * len(sample.units) < 7  # the row groups of its pages only


def bad_docs(change: str) -> list[dict[str, Any]]:
    docs = mmdocir_docs()
    question = docs[0]["questions"][0]
    if change == "box":
        question["layout_mapping"][0]["bbox"] = [10, 20, 150, 65]
    else:
        question["page_id"] = [7]
    return docs


@pytest.mark.parametrize(
    ("docs", "lines", "message"),
    [
        (bad_docs("box"), [], r"jsonl:1: sample 'mmdocir-alpha-0': field 'layout_mapping\[0\].bbox'.*outside its page"),
        (bad_docs("page"), [], r"jsonl:1: sample 'mmdocir-alpha-0': field 'page_id': page 7 is outside the document"),
        (None, ['{"doc_name": "gamma", '], r"MMDocIR_annotations.jsonl:3: sample '\?': field '<line>': invalid JSON"),
    ],
)
def test_mmdocir_bad_input_names_file_sample_and_field(
    tmp_path: Path, docs: list[dict[str, Any]] | None, lines: list[str], message: str
) -> None:
    root = write_mmdocir(tmp_path / "bad", docs, lines)
    with pytest.raises(SampleError, match=message):
        load_dataset(f"mmdocir:{root}")
    report = LoadReport()
    kept = load_dataset(f"mmdocir:{root}", skip_invalid=True, report=report)
    assert len(kept) == (3 if lines else 2) and len(report.skipped) == 1
    assert message.split(": ", 1)[0].replace("\\", "") in report.skipped[0]


def test_mmdocir_refuses_unknown_options(mmdocir_root: Path) -> None:
    with pytest.raises(ValueError, match=r"mmdocir does not take option\(s\) dpi; it takes pages: .*max_pages"):
        load_dataset(f"mmdocir:{mmdocir_root}?dpi=72")
    with pytest.raises(ValueError, match="option pages must be one of evidence, all"):
        load_dataset(f"mmdocir:{mmdocir_root}?pages=some")


# ----------------------------------------------------------------------------------- MMLongBench-Doc

PDFS = {"report.pdf": [(100.0, 130.0)] * 3, "slides.pdf": [(120.0, 90.0), (100.0, 130.0)]}


def mmlb_rows() -> list[dict[str, Any]]:
    def row(doc: str, question: str, answer: str, pages: str, sources: str, fmt: str) -> dict[str, Any]:
        return {
            "doc_id": doc,
            "doc_type": "Research report / Introduction",
            "question": question,
            "answer": answer,
            "evidence_pages": pages,
            "evidence_sources": sources,
            "answer_format": fmt,
        }

    return [
        row("report.pdf", "What is the revenue?", "12", "[2]", "['Chart']", "Int"),
        row("report.pdf", "Who are the authors?", "['Ann', 'Bob']", "[1, 3]", "['Pure-text (Plain-text)']", "List"),
        row("slides.pdf", "What is the CEO's favourite colour?", "Not answerable", "[]", "[]", "None"),
        row("slides.pdf", "What share grew?", "0.12", "[2]", "['Table']", "Float"),
    ]


def write_mmlb(root: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    (root / "documents").mkdir(parents=True, exist_ok=True)
    for name, sizes in PDFS.items():
        document = pdfium.PdfDocument.new()
        for width, height in sizes:
            document.new_page(width, height)
        document.save(root / "documents" / name)
        document.close()
    (root / "samples.json").write_text(json.dumps(mmlb_rows() if rows is None else rows), encoding="utf-8")
    return root


@pytest.fixture
def mmlb_root(tmp_path: Path) -> Path:
    return write_mmlb(tmp_path / "MMLongBench-Doc")


def test_mmlongbench_units_regions_and_unanswerable_items(mmlb_root: Path) -> None:
    samples = by_id(load_dataset(f"mmlongbench-doc:{mmlb_root}"))
    assert sorted(samples) == [f"mmlongbench-doc-{i}" for i in range(4)]
    revenue = samples["mmlongbench-doc-0"]
    assert [(u.kind, u.page, u.width, u.height) for u in revenue.units] == [("page", p, 200, 260) for p in (1, 2, 3)]
    assert revenue.regions == [Region(1)]
    assert revenue.meta == {
        "domain": "mmlongbench-doc",
        "task": "mmlongbench",
        "answer_format": "Int",
        "doc": "report.pdf",
        "doc_type": "Research report / Introduction",
        "sources": ["Chart"],
    }
    assert samples["mmlongbench-doc-1"].regions == [Region(0), Region(2)]
    unanswerable = samples["mmlongbench-doc-2"]
    assert unanswerable.regions == [] and unanswerable.answer == "Not answerable"
    assert [(u.width, u.height) for u in unanswerable.units] == [(240, 180), (200, 260)]
    for unit in unanswerable.units:  # rendered only when loaded, at the declared size
        assert unit.image is None and unit.render is not None
        assert unit.load().size == (unit.width, unit.height)
    small = by_id(load_dataset(f"mmlongbench-doc:{mmlb_root}?dpi=72"))["mmlongbench-doc-2"]
    assert [(u.width, u.height) for u in small.units] == [(120, 90), (100, 130)]
    assert small.units[0].load().size == (120, 90)
    assert score_answer(revenue, "The answer is 12.") == 1.0


def test_scoring_an_unanswerable_question_names_its_document(mmlb_root: Path, tiny_builtin: Any) -> None:
    """The error a user meets when scoring names the record as samples.json does: doc_id and question."""
    from corehead.experiments.score_batch import ScoreOptions, score_batch

    unanswerable = by_id(load_dataset(f"mmlongbench-doc:{mmlb_root}"))["mmlongbench-doc-2"]
    named = """sample 'mmlongbench-doc-2' (doc 'slides.pdf', question "What is the CEO's favourite colour?")"""
    with pytest.raises(SampleError, match=re.escape(named + ": field 'regions': RAM needs an evidence region")):
        score_batch(tiny_builtin, [unanswerable], ScoreOptions(), set())


def test_mmlongbench_page_cap_and_evidence_beyond_the_document(tmp_path: Path, mmlb_root: Path) -> None:
    with pytest.raises(SampleError, match=r"'mmlongbench-doc-1'.*'evidence_pages': page 3 is beyond max_pages=2"):
        load_dataset(f"mmlongbench-doc:{mmlb_root}?max_pages=2")
    rows = mmlb_rows()
    rows[3]["evidence_pages"] = "[9]"
    root = write_mmlb(tmp_path / "bad", rows)
    message = (  # named by what a user searches samples.json by: the doc_id and the question
        r"samples.json\[3\]: sample 'mmlongbench-doc-3' \(doc_id 'slides.pdf', question 'What share grew\?'\): "
        r"field 'evidence_pages': page 9 is outside the document"
    )
    with pytest.raises(SampleError, match=message):
        load_dataset(f"mmlongbench-doc:{root}")
    report = LoadReport()
    assert len(load_dataset(f"mmlongbench-doc:{root}", skip_invalid=True, report=report)) == 3
    assert len(report.skipped) == 1 and "mmlongbench-doc-3" in report.skipped[0]
    with pytest.raises(ValueError, match="does not take option"):
        load_dataset(f"mmlongbench-doc:{mmlb_root}?pages=all")


def test_mmlongbench_with_mmdocir_layout_boxes(tmp_path: Path, mmlb_root: Path) -> None:
    docs = mmdocir_docs()
    docs[0]["doc_name"] = "report"  # MMDocIR names documents without .pdf; questions may differ in case/spaces
    docs[0]["questions"][0]["Q"] = "what is the  revenue?"
    mmdocir_root = write_mmdocir(tmp_path / "MMDocIR", docs)
    samples = load_dataset(f"mmlongbench-doc:{mmlb_root}?mmdocir={mmdocir_root}")
    assert [s.id for s in samples] == ["mmlongbench-doc-0"]  # only the questions MMDocIR has
    assert samples[0].regions == [Region(1, (20.0, 40.0, 100.0, 130.0))]  # MMDocIR page 1 = page 2, 2 px/pt
    tiny = load_dataset(f"mmlongbench-doc:{mmlb_root}?mmdocir={mmdocir_root}&dpi=36")
    assert tiny[0].regions == [Region(1, (5.0, 10.0, 25.0, 32.5))]


# -------------------------------------------------------------------------------------------- metric


@pytest.mark.parametrize(
    ("prediction", "answer", "fmt", "expected"),
    [
        ("The answer is 3.", "3", "Int", 1.0),
        ("3.0", "3", "Int", 1.0),
        ("3.7", "3", "Int", 0.0),
        ("There are three cars.", "3", "Int", 1.0),
        ("In 2019 the firm had 1,234 stores", "1234", "Int", 1.0),
        ("The answer is 12 (see Figure 3).", "12", "Int", 1.0),
        ("The answer is 5", "3", "Int", 0.0),
        ("12%", "0.12", "Float", 1.0),
        ("0.12", "12%", "Float", 1.0),
        ("12", "0.12", "Float", 1.0),
        ("The share is 0.1205", "0.12", "Float", 1.0),
        ("0.15", "0.12", "Float", 0.0),
        ("$3.14 million", "3.14", "Float", 1.0),
        ("Paris", "paris", "Str", 1.0),
        ("The answer is: Paris.", "Paris", "Str", 1.0),
        ("Pariss", "Paris", "Str", 1 - 1 / 6),
        ("London", "Paris", "Str", 0.0),
        ("https://a.org/x", "https://a.org/y", "Str", 0.0),
        ("Bob, Ann", "['Ann', 'Bob']", "List", 1.0),
        ("Ann and Bob", "['Ann', 'Bob']", "List", 1.0),
        ("- Ann\n- Bobb", "['Ann', 'Bob']", "List", 0.75),
        ("['Ann']", "['Ann', 'Bob']", "List", 0.0),
        ("3, 2", "[2, 3]", "List", 1.0),
        ("2, 4", "[2, 3]", "List", 0.0),
        ("Not answerable", "Not answerable", "None", 1.0),
        ("This cannot be answered from the document.", "Not answerable", "None", 1.0),
        ("The question is unanswerable.", "Not answerable", "Str", 1.0),
        ("Paris", "Not answerable", "None", 0.0),
        ("It cannot be determined from the slides.", "12", "Int", 0.0),
        ("Not answerable", "Not answerable here", "Str", 0.0),
    ],
)
def test_mmlongbench_score(prediction: str, answer: str, fmt: str, expected: float) -> None:
    assert score(prediction, answer, fmt) == pytest.approx(expected)


def test_mmlongbench_extraction_and_formats() -> None:
    assert extract("Revenue grew in 2019. The answer is 12 and not 13.", "Int") == 12.0
    assert extract("Revenue grew from 10 in 2019 to 12", "Float") == 12.0
    assert extract("The answer is ['a', 'b']", "List") == ["a", "b"]
    assert extract("1. Ann\n2. Bob", "List") == ["Ann", "Bob"]
    assert extract("Paris\nbecause the map says so", "Str") == "Paris"
    with pytest.raises(ValueError, match="unknown MMLongBench-Doc answer format 'Bool'"):
        score("yes", "yes", "Bool")


# ----------------------------------------------------------------------------------------------- CLI


def test_data_show_prints_mmdocir_pages_and_pixel_boxes(mmdocir_root: Path) -> None:
    result = invoke("--quiet", "data", "show", f"mmdocir:{mmdocir_root}", "--limit", "2")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = by_id(load_dataset(f"mmdocir:{mmdocir_root}", n=2))
    assert [row["id"] for row in rows] == list(expected)
    for row in rows:
        sample = expected[row["id"]]
        assert [(u["kind"], u["page"], u["width"], u["height"]) for u in row["units"]] == [
            ("page", u.page, u.width, u.height) for u in sample.units
        ]
        assert [(r["unit"], tuple(r["box"])) for r in row["regions"]] == [(r.unit, r.box) for r in sample.regions]
        assert row["meta"]["domain"] == "mmdocir"


@pytest.mark.parametrize("dataset", ["mmdocir", "mmlongbench-doc"])
def test_score_and_ablate_run_end_to_end(tmp_path: Path, dataset: str) -> None:
    if dataset == "mmdocir":
        spec = f"mmdocir:{write_mmdocir(tmp_path / 'data')}"
    else:  # answerable questions only: RAM needs a region
        spec = f"mmlongbench-doc:{write_mmlb(tmp_path / 'data', [mmlb_rows()[i] for i in (0, 1, 3)])}"
    common = ["--model", "builtin", "--data", spec, "--limit", "2", "--json"]
    scored = json.loads(invoke("--quiet", "score", *common, "--out", str(tmp_path / "run")).stdout)
    assert scored["n"] == 2 and (tmp_path / "run" / "heads.json").exists()
    record = json.loads((tmp_path / "run" / "heads.json").read_text())["scored"]
    assert record["dataset"] == spec and record["n"] == 2 and record["seed"] == 0
    # the loaders end to end on the few samples there are: the scored ones are ablated, knowingly
    ablate = ["--heads", str(tmp_path / "run"), "--k", "1", "--seeds", "1", "--out", str(tmp_path / "ab")]
    ablate.append("--allow-overlap")
    table = json.loads(invoke("--quiet", "ablate", *common, *ablate).stdout)
    assert table["conditions"] and all(0.0 <= row["accuracy"] <= 1.0 for row in table["conditions"])

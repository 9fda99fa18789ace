"""`corehead report`: one self-contained HTML study whose numbers are the runs' numbers, with hostile text inert."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from corehead.cli import app
from corehead.data import synthetic
from corehead.experiments import ablate, accelerate
from corehead.experiments.evaluate import evaluate
from corehead.experiments.score import ScoreOptions, score_and_select
from corehead.heads import HeadSet, overlap
from corehead.models.qwen_vl import QwenVLAdapter
from corehead.report.html import script_json, write_report

EVIL_QUESTION = '<script>alert(1)</script> Which colour & "shape"?'
EVIL_ID = "<img src=x onerror=alert(2)>-00000"


def build_study(root: Path, adapter: QwenVLAdapter) -> Path:
    """Scoring (maps for 2 samples, one with a hostile id and question), a second scoring run, an ablation
    (on held-out samples) and an acceleration run under `root` (each writes its summary: ablation.json, accelerate.json); returns the
    report."""
    samples = list(synthetic.generate("all", 6, seed=1))
    samples[0] = dataclasses.replace(samples[0], id=EVIL_ID, question=EVIL_QUESTION)
    headset, _ = score_and_select(adapter, samples, root / "run", "synthetic:all", options=ScoreOptions(maps=2))
    evaluate(adapter, samples[:2], out=root / "run" / "answers.jsonl", max_new_tokens=2)
    score_and_select(adapter, samples[3:], root / "run2", "synthetic:all", query="question")
    heads = str(root / "run" / "heads.json")
    tested = [samples[1], *synthetic.generate("all", 4, seed=2)]  # one of them scored on: held out
    ablate.ablate(adapter, tested, headset, root / "ab", [1, 2], seeds=2, max_new_tokens=2, heads=heads)
    accelerate.accelerate(adapter, tested[1:4], headset, root / "acc", 0.1, ["full", "core", "uniform"], 2)
    return write_report([root], root / "report.html")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_builtin: QwenVLAdapter) -> Path:
    return build_study(tmp_path_factory.mktemp("study"), tiny_builtin)


def page_data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="corehead-data">(.*?)</script>', page, re.S)
    assert block is not None
    return json.loads(block.group(1))


def table_rows(page: str, cls: str) -> list[list[str]]:
    """Cell texts of the body rows of the table with class `cls`."""
    body = re.search(rf'<table class="[^"]*\b{cls}\b[^"]*">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert body is not None
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))]


def test_heat_map_and_head_statistics_are_the_runs_numbers(study: Path) -> None:
    page = study.read_text()
    headset = HeadSet.load(study.parent / "run" / "heads.json")
    run = next(r for r in page_data(page)["runs"] if r["label"] == "run")
    assert run["mean"] == headset.scores["mean"] and run["low"] == headset.scores["low"]
    assert [tuple(p) for p in run["selected"]] == headset.selected
    grid = re.search(r'<table class="heat" id="heat-0">(.*?)</table>', page, re.S)
    assert grid is not None
    assert len(re.findall(r"<td[^>]*data-l=", grid.group(1))) == headset.n_layers * headset.n_heads
    assert len(re.findall(r'<td class="core"', grid.group(1))) == len(headset.selected)
    table = pq.read_table(study.parent / "run" / "results").to_pylist()
    lift = [r["lift"] for r in table if r["query"] == headset.query and (r["layer"], r["head"]) == (1, 2)]
    assert run["stats"]["lift"][1][2] == pytest.approx(np.mean(lift), rel=1e-6)
    layer, head = headset.ranking[0]
    assert table_rows(page, "num")[0][:5] == ["1", str(layer), str(head), str(head // headset.groups),
                                              f"{headset.scores['mean'][layer][head]:.3f}"]  # fmt: skip


def test_maps_embedded_for_the_explorer(study: Path) -> None:
    run = next(r for r in page_data(study.read_text())["runs"] if r["label"] == "run")
    assert [s["id"] for s in run["samples"]] == [EVIL_ID, "pages-s1-00001"]
    assert run["samples"][0]["question"] == EVIL_QUESTION  # from answers.jsonl, as data for textContent
    pages = run["samples"][1]
    assert len(pages["pictures"]) == len(pages["units"]) == 2
    import base64

    levels = np.frombuffer(base64.b64decode(pages["maps"]), dtype=np.uint8)
    assert levels.size == run["n_layers"] * run["n_heads"] * len(pages["tokens"])
    assert levels.reshape(run["n_layers"] * run["n_heads"], -1).max(axis=1).tolist() == [255] * 8


def test_ablation_and_acceleration_tables_are_the_json_rows(study: Path) -> None:
    page = study.read_text()
    conditions = json.loads((study.parent / "ab" / "ablation.json").read_text())["conditions"]
    shown = table_rows(page, "ablation")
    assert [(r[1], r[2], r[4], r[5]) for r in shown] == [
        (c["condition"], str(c["k"]), str(len(c.get("draws", []))), f"{c['accuracy']:.3f}") for c in conditions
    ]
    assert [r[8] for r in shown] == [f"{c['p_holm']:.3g}" if "p_holm" in c else "n/a" for c in conditions]
    tops = [(r, c) for r, c in zip(shown, conditions, strict=True) if c["condition"] == "top"]
    assert tops and all(r[10].startswith(f"{c['vs_random']:+.3f} [") for r, c in tops)
    assert all(r[10].endswith(f"p={c['vs_random_p_holm']:.2g}") for r, c in tops)
    assert "held out: yes (1 scored sample(s) excluded)" in page
    methods = json.loads((study.parent / "acc" / "accelerate.json").read_text())["methods"]
    shown = table_rows(page, "acceleration")
    assert [r[0] for r in shown] == ["full", "core", "uniform"]
    assert [r[3].split()[0] for r in shown] == [f"{m['accuracy']:.3f}" for m in methods]
    assert [r[2] for r in shown] == [f"{m['visual_kv_share']:.0%}" for m in methods]


def test_summary_json_and_plot_files_beside_the_report(study: Path) -> None:
    files = study.parent / "report_files"
    summary = json.loads((files / "summary.json").read_text())
    root = study.parent
    a, b = HeadSet.load(root / "run" / "heads.json"), HeadSet.load(root / "run2" / "heads.json")
    assert [s["label"] for s in summary["scoring"]] == ["run", "run2"]
    assert summary["scoring"][0]["heads"]["scores"] == a.scores
    assert summary["overlap"]["jaccard"][0][1] == overlap(a, b)["jaccard"]
    assert summary["overlap"]["spearman"][1][0] == pytest.approx(overlap(b, a)["spearman"])
    ablation = json.loads((root / "ab" / "ablation.json").read_text())
    assert summary["ablation"][0]["conditions"] == ablation["conditions"]
    assert (
        summary["acceleration"][0]["methods"] == json.loads((root / "acc" / "accelerate.json").read_text())["methods"]
    )
    for name in ("score0-heads", "score0-layers", "ablation0", "acceleration0-kv", "acceleration0-decode"):
        assert (files / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (files / f"{name}.svg").read_text()[:2000]
    assert (files / "score0-sample1-units.png").exists()  # the two-page sample's mass per page


def test_hostile_text_is_escaped_and_embedded_json_cannot_close_its_script(study: Path) -> None:
    page = study.read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;-00000" in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data block and the code
    hostile = {"q": "</script><script>alert(1)</script> & <!--", "x": float("nan")}
    text = script_json(hostile)
    assert not set("<>&") & set(text)
    assert json.loads(text) == {"q": hostile["q"], "x": None}


class Links(HTMLParser):
    """Every src and href attribute value of a page's tags."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]


def test_self_contained_no_external_urls(study: Path) -> None:
    page = study.read_text()
    parser = Links()
    parser.feed(page)
    assert len(parser.links) >= 8 and all(link.startswith("data:image/png;base64,") for link in parser.links)
    assert "http://" not in page and "https://" not in page


def test_report_command_and_a_folder_without_runs(study: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r" / "study.html"
    done = runner.invoke(app, ["--quiet", "report", str(study.parent / "run"), str(study.parent / "ab"), "--out",
                               str(out), "--json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"report": str(out), "files": str(tmp_path / "r" / "study_files")}
    assert out.exists() and (tmp_path / "r" / "study_files" / "summary.json").exists()
    for name in ("ablation.jsonl", "ablation.json"):  # an ablation run's files, copied: the report reads its summary
        shutil.copy(study.parent / "ab" / name, tmp_path / name)
    done = runner.invoke(app, ["--quiet", "report", str(tmp_path), "--out", str(tmp_path / "only.html")])
    assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "only_files" / "summary.json").read_text())
    expected = json.loads((study.parent / "ab" / "ablation.json").read_text())["conditions"]
    assert summary["ablation"][0]["conditions"] == expected and summary["scoring"] == []
    (tmp_path / "empty").mkdir()
    bad = runner.invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "bad.html")])
    assert bad.exit_code != 0 and "no runs in" in str(bad.exception)
    assert not (tmp_path / "bad.html").exists()


def test_wall_time_and_the_ablation_curves_drawn_are_the_runs_numbers(study: Path) -> None:
    from corehead.plots import ablation_series

    root = study.parent
    manifest = json.loads((root / "run" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["wall_s"] > 0 and manifest["done"] == {"samples": 6, "of": 6}
    summary = json.loads((root / "report_files" / "summary.json").read_text())
    assert summary["scoring"][0]["wall_s"] == manifest["wall_s"]
    assert summary["ablation"][0]["wall_s"] == json.loads((root / "ab" / "manifest.json").read_text())["wall_s"]
    wall = table_rows(study.read_text(), "runs")[0][-1]
    assert re.fullmatch(r"\d+s|\d+m\d\ds", wall), wall
    conditions = json.loads((root / "ab" / "ablation.json").read_text())["conditions"]
    series = ablation_series(conditions)
    ranking = next(c["ranking"] for c in conditions if c["condition"] == "top")
    names = ("bottom", "random", "random-layer-matched", "top")
    assert sorted(series) == [f"{name} ({ranking})" for name in names]
    top = [c for c in conditions if c["condition"] == "top"]
    assert series[f"top ({ranking})"]["k"] == [1, 2]
    assert series[f"top ({ranking})"]["delta_logprob"] == [c["delta_logprob"] for c in top]
    assert series[f"top ({ranking})"]["delta_logprob_ci"] == [c["delta_logprob_ci"] for c in top]
    random = next(c for c in conditions if c["condition"] == "random" and c["k"] == 2)
    draws = [d["delta_logprob"] for d in random["draws"]]  # the curve is the mean over the draws
    assert len(draws) == 2 and series[f"random ({ranking})"]["delta_logprob"][1] == pytest.approx(np.mean(draws))
    full = next(c["accuracy"] for c in conditions if c["condition"] == "none")
    low, high = random["delta_accuracy_ci"]  # its band: the interval over samples and draws
    assert series[f"random ({ranking})"]["accuracy_ci"][1] == pytest.approx([full + low, full + high])

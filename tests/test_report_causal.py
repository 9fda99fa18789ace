"""The report's causal section: a causal run (`corehead attribute`) beside its scoring run shows RAM against
each head's effect, the agreement of the rankings and both layer profiles; alone, its own effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from test_report import table_rows

from corehead.heads import HeadSet, compare_rankings
from corehead.report.causal import DRAWS, TITLE

SECTION = f"<h2>{TITLE} (attribute-scenes)</h2>"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder as `corehead demo` lays it out: score-scenes/ and attribute-scenes/ (held-out samples:
    another seed), reported together; returns the folder."""
    root = tmp_path_factory.mktemp("causal")
    invoke("--quiet", "score", "--data", "synthetic:scenes", "--limit", "4", "--out", str(root / "score-scenes"))
    invoke("--quiet", "attribute", "--data", "synthetic:scenes", "--seed", "2", "--limit", "4", "--method", "atp",
           "--out", str(root / "attribute-scenes"))  # fmt: skip
    invoke("--quiet", "report", str(root), "--out", str(root / "report.html"))
    return root


def report(*folders: Path, out: Path) -> tuple[str, dict]:
    """`corehead report FOLDERS`: the page and its summary.json."""
    invoke("--quiet", "report", *(str(f) for f in folders), "--out", str(out))
    return out.read_text(), json.loads((out.parent / f"{out.stem}_files" / "summary.json").read_text())


def test_agreement_table_is_compare_rankings(study: Path) -> None:
    page = (study / "report.html").read_text()
    assert page.count(SECTION) == 1 and "Scoring run attribute-scenes" not in page  # not a scoring run
    expected = compare_rankings(study / "score-scenes", study / "attribute-scenes", draws=DRAWS)
    shown = table_rows(page, "agreement")
    assert [r[0] for r in shown] == [r["ranking"] for r in expected]
    assert {"ram:question", "ram:answer", "ram_minus_distractor:all"} <= {r[0] for r in shown}
    for cells, row in zip(shown, expected, strict=True):
        assert cells[1] == f"{row['spearman']:.2f} [{row['spearman_low']:.2f}, {row['spearman_high']:.2f}]"
        assert cells[2].startswith(f"{row['precision']:.2f} [") and cells[3].startswith(f"{row['recall']:.2f} [")
        assert cells[4:] == ["4 / 4", "0"]  # samples of each run; none shared (another seed)
    k, needed = expected[0]["k"], expected[0]["needed"]
    assert f"<th>precision@{k} [95% CI]</th>" in page and f"<th>recall of {needed} needed [95% CI]</th>" in page
    assert "causal effect CI lies above 0" in page and "neither ranking shares samples with the ablation" in page


def test_figures_and_numbers_are_the_runs(study: Path) -> None:
    files = study / "report_files"
    summary = json.loads((files / "summary.json").read_text())
    assert [s["label"] for s in summary["scoring"]] == ["score-scenes"]
    (causal,) = summary["causal"]
    assert causal["label"] == "attribute-scenes" and causal["scoring_run"] == "score-scenes"
    assert [r["ranking"] for r in causal["agreement"]] == [
        r["ranking"] for r in compare_rankings(study / "score-scenes", study / "attribute-scenes", draws=DRAWS)
    ]
    effect = json.loads((study / "attribute-scenes" / "attribute.json").read_text())["effect"]
    assert causal["effect"] == effect
    assert causal["layer_profile"]["causal"] == pytest.approx(np.mean(effect["mean"], axis=1).tolist())
    ram = HeadSet.load(study / "score-scenes" / "heads.json")
    assert causal["layer_profile"]["ram"] == pytest.approx(ram.layer_profile().tolist())
    page = (study / "report.html").read_text()
    for name in ("causal0-scatter", "causal0-layers", "causal0-heads"):
        assert (files / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (files / f"{name}.svg").read_text()[:2000]
    assert 'alt="RAM against causal effect per head (attribute-scenes)" src="data:image/png;base64,' in page
    assert 'alt="mean per layer: causal effect and ram"' in page


def test_a_lone_causal_run_and_one_given_beside_its_scoring_run(study: Path, tmp_path: Path) -> None:
    page, summary = report(study / "attribute-scenes", out=tmp_path / "lone.html")
    assert SECTION in page and "no scoring run of this model beside it" in page
    assert "num agreement" not in page and "RAM against causal effect" not in page
    assert 'alt="causal effect per head (attribute-scenes)"' in page and 'alt="mean per layer: causal effect"' in page
    assert summary["scoring"] == [] and summary["causal"][0]["scoring_run"] is None
    assert summary["causal"][0]["layer_profile"]["ram"] is None
    page, summary = report(study / "attribute-scenes", study / "score-scenes", out=tmp_path / "both.html")
    assert summary["causal"][0]["scoring_run"] == "score-scenes"  # the only scoring run of that model and data
    assert [r["ranking"] for r in summary["causal"][0]["agreement"]] == [r[0] for r in table_rows(page, "agreement")]

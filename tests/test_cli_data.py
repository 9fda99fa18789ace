"""Tests of the `corehead` command line for data: --help, `data show`, `data synth` and error output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke

from corehead import cli
from corehead.data import synthetic
from corehead.data.sample import write_jsonl


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert all(line.strip() for line in lines), lines
    return [json.loads(line) for line in lines]


def corehead_command() -> list[str]:
    """The installed console script (next to this interpreter), or the same entry point via -c."""
    script = Path(sys.executable).parent / "corehead"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from corehead.cli import main; main()"]


@pytest.fixture
def bad_file(tmp_path: Path) -> Path:
    """A JSONL file whose first line is valid and whose second has a box outside its image."""
    write_jsonl(list(synthetic.generate("scenes", 2)), tmp_path)
    good, bad = (json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines())
    bad["id"] = "the-bad-one"
    bad["regions"][0]["box"] = [10, 10, 20, 999]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    return path


def test_help_lists_commands() -> None:
    result = invoke("--help")
    for command in ("eval", "demo", "train-builtin", "data"):
        assert command in result.output
    data_help = invoke("data", "--help")
    for command in ("show", "synth"):
        assert command in data_help.output


def test_show_synthetic_prints_one_json_object_per_sample() -> None:
    result = invoke("data", "show", "synthetic:scenes", "--limit", "3")
    rows = json_lines(result.stdout)
    assert len(rows) == 3
    assert [row["id"] for row in rows] == ["scenes-s0-00000", "scenes-s0-00001", "scenes-s0-00002"]
    for row in rows:
        assert {"id", "units", "question", "answer", "regions", "distractors"} <= set(row)
        assert row["units"] and row["regions"] and row["distractors"]
        for unit in row["units"]:
            assert {"kind", "source", "width", "height"} <= set(unit)
            assert unit["kind"] == "image"
            assert (unit["width"], unit["height"]) == (synthetic.SCENE_SIZE, synthetic.SCENE_SIZE)
        for region in row["regions"]:
            assert set(region) == {"unit", "box"}
        for region in [*row["regions"], *row["distractors"]]:
            assert set(region) <= {"unit", "box", "object"}
            assert ("object" in region) == (region in row["distractors"])  # distractors name their object
            assert isinstance(region["unit"], int)
            assert len(region["box"]) == 4
        assert row["answer"] in synthetic.COLOURS
        assert row["question"].endswith("?")


def test_show_seed_changes_samples() -> None:
    a = json_lines(invoke("data", "show", "synthetic:pages", "--limit", "1").stdout)
    b = json_lines(invoke("data", "show", "synthetic:pages", "--limit", "1", "--seed", "4").stdout)
    assert a[0]["id"] == "pages-s0-00000"
    assert b[0]["id"] == "pages-s4-00000"


def test_show_frames_carry_frame_and_timestamp_and_pages_carry_page() -> None:
    (clip,) = json_lines(invoke("data", "show", "synthetic:clips", "--limit", "1").stdout)
    assert len(clip["units"]) == synthetic.CLIP_FRAMES
    for i, unit in enumerate(clip["units"]):
        assert unit["kind"] == "frame"
        assert unit["frame"] == i
        assert unit["timestamp"] == pytest.approx(i / synthetic.CLIP_FPS)
        assert "page" not in unit
    for doc in json_lines(invoke("data", "show", "synthetic:pages", "--limit", "2").stdout):
        assert [unit["page"] for unit in doc["units"]] == list(range(1, len(doc["units"]) + 1))
        for unit in doc["units"]:
            assert unit["kind"] == "page"
            assert "frame" not in unit and "timestamp" not in unit


def test_synth_writes_a_dataset_that_show_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "pages"
    result = invoke("data", "synth", "--domain", "pages", "--n", "4", "--out", str(out))
    assert "wrote 4 samples" in result.stderr
    assert result.stdout == ""
    written = json_lines((out / "samples.jsonl").read_text(encoding="utf-8"))
    assert len(written) == 4
    n_units = sum(len(row["units"]) for row in written)
    assert len(list((out / "images").glob("*.png"))) == n_units

    for spec in (str(out), str(out / "samples.jsonl")):
        rows = json_lines(invoke("data", "show", spec, "--limit", "10").stdout)
        assert [row["id"] for row in rows] == [row["id"] for row in written]
        for row, stored in zip(rows, written, strict=True):
            assert row["question"] == stored["question"] and row["answer"] == stored["answer"]
            for unit in row["units"]:
                assert unit["kind"] == "page" and unit["page"] >= 1
                source = unit["source"]
                assert source.startswith("images/") and not Path(source).is_absolute(), source
                assert (out / source).is_file()
    assert len(json_lines(invoke("data", "show", str(out), "--limit", "2").stdout)) == 2


def test_bad_file_is_one_error_line_without_traceback(bad_file: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["NO_COLOR"] = "1"
    proc = subprocess.run(
        [*corehead_command(), "data", "show", str(bad_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    assert "the-bad-one" in line
    assert "regions[0].box" in line
    assert "bad.jsonl:2" in line
    assert "Traceback" not in proc.stderr


def test_skip_invalid_succeeds_and_counts_skipped(bad_file: Path) -> None:
    result = invoke("data", "show", str(bad_file), "--skip-invalid")
    rows = json_lines(result.stdout)
    assert [row["id"] for row in rows] == ["scenes-s0-00000"]
    assert "skipped 1 invalid sample" in result.stderr
    assert "the-bad-one" in result.stderr


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the console entry point in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["corehead", *args])
    monkeypatch.setenv("NO_COLOR", "1")
    with pytest.raises(SystemExit) as info:
        cli.main()
    return int(info.value.code or 0), capsys.readouterr().err


def test_unknown_synthetic_domain_is_an_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = run_main(monkeypatch, capsys, "data", "show", "synthetic:nope")
    assert code == 1
    assert stderr.startswith("error:") and "nope" in stderr
    assert len(stderr.splitlines()) == 1


def test_all_skipped_is_an_error(
    bad_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_file.write_text(bad_file.read_text().splitlines()[1] + "\n")
    code, stderr = run_main(monkeypatch, capsys, "data", "show", str(bad_file), "--skip-invalid")
    assert code == 1
    assert "skipped 1 invalid sample" in stderr
    assert stderr.splitlines()[-1].startswith("error: no samples")


def test_debug_raises_the_exception(bad_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["corehead", "--debug", "data", "show", str(bad_file)])
    with pytest.raises(ValueError, match="the-bad-one"):
        cli.main()


def test_error_line_keeps_square_brackets(
    bad_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = bad_file.read_text().splitlines()
    bad = json.loads(rows[1])
    bad["regions"][0]["box"] = [1, 2, 3]
    bad_file.write_text(rows[0] + "\n" + json.dumps(bad) + "\n")
    code, stderr = run_main(monkeypatch, capsys, "data", "show", str(bad_file))
    assert code == 1
    assert "[x0, y0, x1, y1]" in stderr

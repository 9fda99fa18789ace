"""`corehead eval` and load_model on a saved checkpoint of the built-in architecture (random weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from corehead.cli import app
from corehead.models import load_model
from corehead.models.qwen_vl import QwenVLAdapter


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory, tiny_builtin: QwenVLAdapter) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen3-vl")
    tiny_builtin.model.save_pretrained(path)
    tiny_builtin.tokenizer.save_pretrained(path)
    tiny_builtin.image_processor.save_pretrained(path)
    return path


def test_load_model_picks_the_family_adapter(saved_model: Path, tiny_builtin: QwenVLAdapter) -> None:
    adapter = load_model(str(saved_model))
    assert isinstance(adapter, QwenVLAdapter) and adapter.family == "qwen3_vl"
    from corehead.data.synthetic import make_sample

    sample = make_sample("pages", 0, 0)
    assert adapter.generate([sample], max_new_tokens=3) == tiny_builtin.generate([sample], max_new_tokens=3)


def test_unknown_architecture_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"unsupported architecture 'bert'.*qwen3_vl"):
        load_model(str(tmp_path))


def test_eval_json_reports_accuracy_and_seed_changes_samples(saved_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--quiet", "eval", "--model", str(saved_model), "--data", "synthetic:clips", "--n", "4", "--json"]
    first = runner.invoke(app, [*args, "--seed", "1", "--out", str(tmp_path / "p1.jsonl")])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["n"] == 4 and summary["model"] == str(saved_model) and summary["data"] == "synthetic:clips"
    assert 0.0 <= summary["accuracy"] <= 1.0 and set(summary["by_domain"]) == {"clips"}
    rows = [json.loads(line) for line in (tmp_path / "p1.jsonl").read_text().splitlines()]
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 4)
    second = runner.invoke(app, [*args, "--seed", "2", "--out", str(tmp_path / "p2.jsonl")])
    assert second.exit_code == 0, second.output
    other = [json.loads(line) for line in (tmp_path / "p2.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] != [r["question"] for r in other]


def test_eval_on_a_jsonl_dataset(saved_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    synth = runner.invoke(app, ["--quiet", "data", "synth", "--domain", "all", "--n", "3", "--out", str(tmp_path)])
    assert synth.exit_code == 0, synth.output
    result = runner.invoke(app, ["--quiet", "eval", "--model", str(saved_model), "--data", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 3


def test_score_then_ablate_from_the_command_line(saved_model: Path, tmp_path: Path) -> None:
    """The issue's commands: score a run, then cut its top heads with controls and compared rankings."""
    runner = CliRunner()
    common = ["--model", str(saved_model), "--data", "synthetic:scenes", "--limit", "4"]
    scored = runner.invoke(app, ["--quiet", "score", *common, "--out", str(tmp_path / "run"), "--maps", "2", "--json"])
    assert scored.exit_code == 0, scored.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "heads.json",
        "heads.png",
        "manifest.json",
        "maps",
        "results",
    ]
    args = ["--heads", str(tmp_path / "run" / "heads.json"), "--k", "1,25%", "--controls", "bottom,random"]
    args += ["--seeds", "2", "--mode", "patch", "--rankings", "question,ram_minus_distractor:all"]
    done = runner.invoke(app, ["--quiet", "ablate", *common, *args, "--out", str(tmp_path / "ab"), "--json"])
    assert done.exit_code == 0, done.output
    table = json.loads(done.stdout)["conditions"]
    seen = {(r["ranking"], r["condition"], r["k"]) for r in table}
    assert ("", "none", 0) in seen and ("ram:all", "random-1", 2) in seen and ("ram:all", "bottom", 1) in seen
    assert ("ram:question", "top", 2) in seen and ("ram_minus_distractor:all", "top", 1) in seen
    assert all("to_source" in r and 0 <= r["p_value"] <= 1 for r in table)
    assert (tmp_path / "ab" / "ablation.json").exists()
    assert (tmp_path / "ab" / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, ["ablate", *common, "--heads", str(tmp_path / "run"), "--k", "ten"])
    assert bad.exit_code != 0 and "counts or percentages" in str(bad.exception)  # main() prints it as one line


def test_accelerate_compares_methods_at_one_kv_budget(saved_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--model", str(saved_model), "--data", "synthetic:all", "--limit", "3"]
    assert runner.invoke(app, ["--quiet", "score", *common, "--out", str(tmp_path / "run")]).exit_code == 0
    args = ["--heads", str(tmp_path / "run"), "--budget", "0.1", "--out", str(tmp_path / "acc"), "--json"]
    done = runner.invoke(app, ["--quiet", "accelerate", *common, *args, "--max-new-tokens", "3"])
    assert done.exit_code == 0, done.output
    table = {r["method"]: r for r in json.loads(done.stdout)["methods"]}
    assert list(table) == ["full", "core", "uniform", "fastv", "random", "bottom", "duo", "sparsemm"]
    assert table["full"]["kv_bytes_vs_full"] == 1.0 and table["full"]["visual_kv_share"] == 1.0
    shares = {m: r["visual_kv_share"] for m, r in table.items() if m not in ("full", "fastv")}
    assert max(shares.values()) - min(shares.values()) < 1e-6  # one total budget for all
    assert all(r["kv_bytes"] < table["full"]["kv_bytes"] for m, r in table.items() if m != "full")
    assert (tmp_path / "acc" / "accelerate.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "acc" / "accelerate.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 8
    again = runner.invoke(app, ["--quiet", "accelerate", *common, *args, "--max-new-tokens", "3"])
    assert again.exit_code == 0 and len((tmp_path / "acc" / "accelerate.jsonl").read_text().splitlines()) == 24
    other = runner.invoke(app, ["accelerate", *common, *args, "--prefill", "--methods", "full,core"])
    assert other.exit_code != 0 and "other settings (prefill was false)" in str(other.exception)
    args[-2] = str(tmp_path / "acc-prefill")
    prefilled = runner.invoke(app, ["--quiet", "accelerate", *common, *args, "--prefill", "--methods", "full,core,duo"])
    assert prefilled.exit_code == 0, prefilled.output
    assert json.loads(prefilled.stdout)["prefill"] is True
    args[-2] = str(tmp_path / "acc-agnostic")
    agnostic = runner.invoke(
        app, ["--quiet", "accelerate", *common, *args, "--query-agnostic", "--methods", "full", "--max-new-tokens", "3"]
    )
    assert agnostic.exit_code == 0, agnostic.output
    rows = [json.loads(line) for line in (tmp_path / "acc-agnostic" / "accelerate.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (tmp_path / "acc" / "accelerate.jsonl").read_text().splitlines()]
    # full attention answers the same whether the question comes in a second forward or not
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in plain if r["method"] == "full"]


@pytest.mark.slow
def test_study_scores_each_domain_then_tests_held_out_samples_and_resumes(saved_model: Path, tmp_path: Path) -> None:
    """`corehead study` on a model and dataset of one's own: every stage a run folder, the report at the end."""
    runner = CliRunner()
    args = ["--quiet", "study", "--model", str(saved_model), "--data", "synthetic:all", "--limit", "12"]
    args += ["--n-score", "2", "--n-ablate", "2", "--n-accelerate", "1", "--k", "1", "--seeds", "1"]
    args += ["--methods", "full,core", "--out", str(tmp_path), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["model"] == str(saved_model) and summary["n"] == 3 * 2  # the held-out samples are evaluated
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert Path(summary["report"]).exists() and summary["wall_s"] >= 0
    for domain in ("scenes", "pages", "clips"):
        scored = set(pq.read_table(tmp_path / f"score-{domain}" / "results").column("sample_id").to_pylist())
        ablated = {json.loads(line)["id"] for line in (tmp_path / f"ablate-{domain}" / "ablation.jsonl").open()}
        assert len(scored) == len(ablated) == 2 and not scored & ablated
        assert (
            summary["ablation"][domain]
            == json.loads((tmp_path / f"ablate-{domain}" / "ablation.json").read_text())["conditions"]
        )
        methods = json.loads((tmp_path / f"accelerate-{domain}" / "accelerate.json").read_text())["methods"]
        assert [m["method"] for m in methods] == ["full", "core"] and methods[0]["n"] == 1
    rows = (tmp_path / "ablate-scenes" / "ablation.jsonl").read_text()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "ablate-scenes" / "ablation.jsonl").read_text() == rows  # resumed: nothing redone
    assert {k: v for k, v in json.loads(again.stdout).items() if k != "wall_s"} == {
        k: v for k, v in summary.items() if k != "wall_s"
    }
    few = runner.invoke(app, [*args[:-3], "--n-score", "4", "--out", str(tmp_path / "few")])
    assert few.exit_code != 0 and "none left to test after --n-score 4" in str(few.exception)

"""`corehead eval` and load_model on a saved checkpoint of the built-in architecture (random weights)."""

from __future__ import annotations

import hashlib
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
    """The issue's commands: score a run, then cut its top heads with controls and compared rankings, on
    samples it was not scored on: the scoring run's own samples are excluded and counted (or, with
    --allow-overlap, kept and marked)."""
    runner = CliRunner()
    common = ["--model", str(saved_model), "--data", "synthetic:scenes"]
    scored = runner.invoke(
        app, ["--quiet", "score", *common, "--limit", "4", "--out", str(tmp_path / "run"), "--maps", "2", "--json"]
    )
    assert scored.exit_code == 0, scored.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "heads.json",
        "heads.png",
        "manifest.json",
        "maps",
        "results",
    ]
    heads = json.loads((tmp_path / "run" / "heads.json").read_text())
    own = f"{heads['metric']}:{heads['query']}"
    args = ["--heads", str(tmp_path / "run" / "heads.json"), "--k", "1,25%", "--controls", "bottom,random"]
    args += ["--seeds", "2", "--mode", "patch", "--rankings", "question,ram_minus_distractor:all"]
    more = [*common, "--limit", "6"]  # the 4 scored samples and 2 others
    done = runner.invoke(app, ["--quiet", "ablate", *more, *args, "--out", str(tmp_path / "ab"), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["held_out"] == {
        "excluded": 4, "overlap": 4, "allow_overlap": False, "scored_digest": heads["scored"]["digest"]
    }  # fmt: skip
    rows = _jsonl(tmp_path / "ab" / "ablation.jsonl")
    assert {r["id"] for r in rows} == {f"scenes-s0-{i:05d}" for i in (4, 5)}
    assert not {r["id"] for r in rows} & set(heads["scored"]["ids"])
    table = result["conditions"]
    seen = {(r["ranking"], r["condition"], r["k"]) for r in table}
    assert ("", "none", 0) in seen and (own, "random", 2) in seen and (own, "bottom", 1) in seen
    assert ("ram:question", "top", 2) in seen and ("ram_minus_distractor:all", "top", 1) in seen
    assert ("ram_minus_distractor:all", "random", 1) in seen  # every ranking has its own controls
    assert all(len(r["draws"]) == 2 for r in table if r["condition"] == "random")
    assert all("to_source" in r and 0 <= r["p_value"] <= 1 and r["n"] == 2 for r in table)
    assert (tmp_path / "ab" / "ablation.json").exists()
    assert (tmp_path / "ab" / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    kept = runner.invoke(
        app, ["--quiet", "ablate", *more, *args, "--allow-overlap", "--out", str(tmp_path / "kept"), "--json"]
    )
    assert kept.exit_code == 0, kept.output
    marked = json.loads(kept.stdout)
    assert marked["held_out"] == {**result["held_out"], "excluded": 0, "allow_overlap": True}
    assert all(r["n"] == 6 for r in marked["conditions"])
    same = runner.invoke(app, ["ablate", *common, "--limit", "4", *args, "--out", str(tmp_path / "same")])
    assert same.exit_code != 0 and "all 4 samples were scored on" in str(same.exception)
    bad = runner.invoke(app, ["ablate", *more, "--heads", str(tmp_path / "run"), "--k", "ten"])
    assert bad.exit_code != 0 and "counts or percentages" in str(bad.exception)  # main() prints it as one line


def _jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_accelerate_compares_methods_at_one_kv_budget(saved_model: Path, tmp_path: Path) -> None:
    """Heads scored on seed 1, every method on 3 samples of seed 0: one KV budget, paired differences to full
    and core that the rows reproduce, random drawn outside the CoRe KV heads; resumes; settings checked."""
    runner = CliRunner()
    model = ["--model", str(saved_model), "--data", "synthetic:all"]
    scored = runner.invoke(
        app, ["--quiet", "score", *model, "--seed", "1", "--limit", "2", "--out", str(tmp_path / "run")]
    )
    assert scored.exit_code == 0, scored.output
    common = [*model, "--limit", "3"]
    args = ["--heads", str(tmp_path / "run"), "--budget", "0.1", "--out", str(tmp_path / "acc"), "--json"]
    done = runner.invoke(app, ["--quiet", "accelerate", *common, *args, "--max-new-tokens", "3", "--seeds", "2"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    table = {r["method"]: r for r in summary["methods"]}
    assert list(table) == ["full", "core", "uniform", "fastv", "random", "bottom", "duo", "sparsemm"]
    assert table["full"]["kv_bytes_vs_full"] == 1.0 and table["full"]["visual_kv_share"] == 1.0
    shares = {m: r["visual_kv_share"] for m, r in table.items() if m not in ("full", "fastv")}
    assert max(shares.values()) - min(shares.values()) < 1e-6  # one total budget for all
    assert all(r["kv_bytes"] < table["full"]["kv_bytes"] for m, r in table.items() if m != "full")
    assert (tmp_path / "acc" / "accelerate.png").read_bytes()[:4] == b"\x89PNG"
    rows = _jsonl(tmp_path / "acc" / "accelerate.jsonl")
    assert len(rows) == 3 * (7 + 2) and {r["draw"] for r in rows if r["method"] == "random"} == {0, 1}
    heads = json.loads((tmp_path / "run" / "heads.json").read_text())
    want_digest = hashlib.sha256("\n".join(sorted(heads["scored"]["ids"])).encode()).hexdigest()
    assert summary["held_out"] == {"excluded": 0, "overlap": 0, "allow_overlap": False, "scored_digest": want_digest}
    _check_pairs(rows, table)
    groups = heads["n_heads"] // heads["n_kv_heads"]
    core_kv = {(layer, h // groups) for layer, h in heads["selected"]}
    manifest = json.loads((tmp_path / "acc" / "manifest.json").read_text())
    draws = manifest["draws"]["random"]
    assert [d["seed"] for d in draws] == [0, 1] and manifest["held_out"] == summary["held_out"]
    assert all(
        len(d["full_kv_heads"]) == len(core_kv) and not core_kv & {tuple(h) for h in d["full_kv_heads"]} for d in draws
    )
    again = runner.invoke(app, ["--quiet", "accelerate", *common, *args, "--max-new-tokens", "3", "--seeds", "2"])
    assert again.exit_code == 0 and len(_jsonl(tmp_path / "acc" / "accelerate.jsonl")) == 27
    more = runner.invoke(app, ["--quiet", "accelerate", *common, *args, "--max-new-tokens", "3", "--seeds", "3"])
    assert more.exit_code == 0 and len(_jsonl(tmp_path / "acc" / "accelerate.jsonl")) == 30  # only draw 2 added
    assert [d["seed"] for d in json.loads(more.stdout)["methods"][4]["draws"]] == [0, 1, 2]
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
    # full attention answers the same whether the question comes in a second forward or not
    plain = [r["prediction"] for r in rows if r["method"] == "full"]
    assert [r["prediction"] for r in _jsonl(tmp_path / "acc-agnostic" / "accelerate.jsonl")] == plain


def _check_pairs(rows: list[dict], table: dict[str, dict]) -> None:
    """Each method minus full and minus core, recomputed from the rows: the mean over draws and samples of
    its correctness minus the reference's on the same sample."""
    correct = {(r["method"], r["draw"], r["id"]): float(r["correct"]) for r in rows}
    ids = sorted({r["id"] for r in rows})
    for method, row in table.items():
        draws = sorted({d for m, d, _ in correct if m == method}, key=str)
        for ref in ("full", "core"):
            if ref == method:
                assert ref not in row["paired"]
                continue
            diffs = [correct[(method, d, i)] - correct[(ref, None, i)] for d in draws for i in ids]
            pair = row["paired"][ref]
            assert pair["delta"] == pytest.approx(sum(diffs) / len(diffs)) and pair["n"] == 3
            assert pair["ci"][0] <= pair["delta"] <= pair["ci"][1] and 0 < pair["p"] <= 1
        mean = sum(correct[(method, d, i)] for d in draws for i in ids) / (len(draws) * len(ids))
        assert row["accuracy"] == pytest.approx(mean) and row["n"] == 3


def test_accelerate_leaves_out_the_samples_its_heads_were_scored_on(saved_model: Path, tmp_path: Path) -> None:
    """Heads scored on 2 samples of seed 1; accelerate on 3 of seed 1 tests only the third, or all three
    (marked) with --allow-overlap; on the 2 scored ones alone it refuses."""
    runner = CliRunner()
    model = ["--model", str(saved_model), "--data", "synthetic:all", "--seed", "1"]
    scored = runner.invoke(app, ["--quiet", "score", *model, "--limit", "2", "--out", str(tmp_path / "run")])
    assert scored.exit_code == 0, scored.output
    ids = sorted(json.loads((tmp_path / "run" / "heads.json").read_text())["scored"]["ids"])
    args = ["--heads", str(tmp_path / "run"), "--methods", "full,core", "--max-new-tokens", "2", "--json"]
    held = runner.invoke(app, ["--quiet", "accelerate", *model, "--limit", "3", *args, "--out", str(tmp_path / "a")])
    assert held.exit_code == 0, held.output
    summary = json.loads(held.stdout)
    assert summary["held_out"]["excluded"] == summary["held_out"]["overlap"] == 2
    assert summary["held_out"]["allow_overlap"] is False and summary["methods"][0]["n"] == 1
    assert {r["id"] for r in _jsonl(tmp_path / "a" / "accelerate.jsonl")} == {"clips-s1-00002"}
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["held_out"] == summary["held_out"]
    kept = runner.invoke(
        app, ["accelerate", *model, "--limit", "3", *args[:-1], "--allow-overlap", "--out", str(tmp_path / "b")]
    )
    assert kept.exit_code == 0, kept.output
    assert "2 sample(s) were also scored on" in kept.output and "scored samples kept" in kept.output
    marked = json.loads((tmp_path / "b" / "accelerate.json").read_text())
    assert marked["held_out"]["overlap"] == 2 and marked["held_out"]["allow_overlap"] is True
    assert marked["methods"][0]["n"] == 3 and ids == ["pages-s1-00001", "scenes-s1-00000"]
    none_left = runner.invoke(app, ["accelerate", *model, "--limit", "2", *args, "--out", str(tmp_path / "c")])
    assert none_left.exit_code != 0 and "all 2 samples were scored on" in str(none_left.exception)


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

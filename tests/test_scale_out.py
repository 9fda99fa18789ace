"""Scale-out: runs sharded over processes (accelerate, gloo on CPU) equal single-process runs, a killed
multi-process run resumes without losing or duplicating a row, and batching does not change a row."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoConfig
from typer.testing import CliRunner

from corehead.cli import app
from corehead.data.synthetic import generate
from corehead.experiments.runs import Shard, length_batches, sample_length
from corehead.experiments.score import ScoreOptions, score
from corehead.models.builtin import WEIGHTS
from corehead.models.qwen_vl import QwenVLAdapter

runner = CliRunner()
KEYS = ["sample_id", "layer", "head", "query"]


def _corehead(*args: str) -> list[str]:
    return [sys.executable, "-m", "corehead", "--quiet", *args]


def _run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_corehead(*args), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _single(*args: str) -> None:
    """The command in this process on one thread, as each worker of a 2-process launch runs
    (accelerate's launcher sets OMP_NUM_THREADS=1): float reductions then match bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = runner.invoke(app, ["--quiet", *args])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output


def _same_results(a: Path, b: Path) -> None:
    """Identical merged results (same rows, same order, same bits) and an identical heads.json."""
    ta, tb = pq.read_table(a / "results"), pq.read_table(b / "results")
    assert ta.num_rows > 0 and ta.equals(tb)
    assert (a / "heads.json").read_bytes() == (b / "heads.json").read_bytes()


def test_length_batches_group_similar_samples_and_shards_partition_them() -> None:
    samples = [s for d in ("scenes", "pages", "clips") for s in generate(d, 5, seed=1)]
    batches = length_batches(samples, 4)
    assert sorted(s.id for b in batches for s in b) == sorted(s.id for s in samples)
    lengths = [sample_length(s) for b in batches for s in b]
    assert lengths == sorted(lengths)
    domains = [s.domain for b in batches for s in b]
    assert sum(a != b for a, b in itertools.pairwise(domains)) == 2  # each domain's sizes together
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        length_batches(samples, 0)
    shards = [Shard(r, 3).batches(samples, 2) for r in range(3)]
    ids = [s.id for shard in shards for b in shard for s in b]
    assert sorted(ids) == sorted(s.id for s in samples) and len(ids) == len(set(ids))
    assert shards[1] == length_batches(samples, 2)[1::3]


def test_batched_scoring_equals_unbatched(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("all", 6, seed=4))
    one = score(tiny_builtin, samples, tmp_path / "one", "synthetic:all", ScoreOptions(batch_size=1))
    four = score(tiny_builtin, samples, tmp_path / "four", "synthetic:all", ScoreOptions(batch_size=4))
    assert one.table.column("sample_id").to_pylist() == four.table.column("sample_id").to_pylist()
    assert one.table.column("sample_id").to_pylist()[0] == samples[0].id  # merged in dataset order
    for name in ("ram", "visual_mass", "distractor_mass"):
        np.testing.assert_allclose(four.table.column(name).to_numpy(), one.table.column(name).to_numpy(), atol=1e-5)
    # a rerun with another batch size into the same folder is allowed and adds nothing
    again = score(tiny_builtin, samples, tmp_path / "one", "synthetic:all", ScoreOptions(batch_size=3))
    assert again.table.num_rows == one.table.num_rows
    assert [p.name for p in (tmp_path / "one" / "results").glob("*.parquet")] == ["part-merged.parquet"]


def test_device_map_auto_scores_like_the_default(tmp_path: Path) -> None:
    common = ["--data", "synthetic:scenes", "--limit", "3", "--batch-size", "3"]
    for name, extra in (("default", []), ("auto", ["--device-map", "auto", "--dtype", "float32"])):
        _single("score", *common, "--out", str(tmp_path / name), *extra)
    _same_results(tmp_path / "default", tmp_path / "auto")
    bad = runner.invoke(app, ["score", *common, "--out", str(tmp_path / "x"), "--dtype", "float8"])
    assert bad.exit_code != 0 and "--dtype must be one of" in str(bad.exception)


@pytest.mark.slow
def test_two_processes_score_and_ablate_like_one(tmp_path: Path) -> None:
    common = ["--data", "synthetic:all", "--limit", "9", "--batch-size", "2"]
    _single("score", *common, "--out", str(tmp_path / "one"))
    _run("score", *common, "--out", str(tmp_path / "two"), "--num-processes", "2")
    _same_results(tmp_path / "one", tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["complete"] and manifest["done"] == {"samples": 9, "of": 9}
    assert manifest["wall_s"] > 0 and manifest["finished"] >= manifest["started"]

    held_out = ["--seed", "1"]  # tested on other samples than those scored
    ablation = [
        "--heads",
        str(tmp_path / "one"),
        *common[:4],
        *held_out,
        "--k",
        "2",
        "--seeds",
        "1",
        "--batch-size",
        "3",
    ]
    ablation += ["--controls", "bottom,random"]
    _single("ablate", *ablation, "--out", str(tmp_path / "ab1"))
    _run("ablate", *ablation, "--out", str(tmp_path / "ab2"), "--num-processes", "2")
    one, two = ((tmp_path / d / "ablation.jsonl").read_text() for d in ("ab1", "ab2"))
    assert one == two and len(two.splitlines()) == 9 * 4  # the same rows in the same order: none, top, bottom, random
    assert not list((tmp_path / "ab2").glob("ablation.r*.jsonl"))  # per-rank files merged away

    kv = [
        "--heads",
        str(tmp_path / "one"),
        "--data",
        "synthetic:all",
        *held_out,
        "--limit",
        "4",
        "--methods",
        "full,core",
    ]
    _single("accelerate", *kv, "--max-new-tokens", "3", "--out", str(tmp_path / "kv1"))
    _run("accelerate", *kv, "--max-new-tokens", "3", "--out", str(tmp_path / "kv2"), "--num-processes", "2")
    untimed = ("id", "method", "prediction", "correct", "kv_bytes", "kv_bytes_full", "visual_kv_share")
    one, two = ([{k: json.loads(x)[k] for k in untimed} for x in (tmp_path / d / "accelerate.jsonl").open()]
                for d in ("kv1", "kv2"))  # fmt: skip
    assert one == two and len(two) == 4 * 2


@pytest.mark.slow
def test_two_processes_run_a_study_like_one(tmp_path: Path) -> None:
    study = ["study", "--data", "synthetic:scenes", "--limit", "12", "--n-score", "6", "--n-ablate", "6"]
    study += ["--n-accelerate", "3", "--k", "2", "--seeds", "1", "--methods", "full,core", "--batch-size", "2"]
    _single(*study, "--out", str(tmp_path / "one"))
    _run(*study, "--out", str(tmp_path / "two"), "--num-processes", "2")
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    for key in ("n", "accuracy", "by_domain", "core_heads", "ablation"):
        assert one[key] == two[key], key
    untimed = ("method", "n", "accuracy", "kv_bytes", "visual_kv_share")
    assert [{k: r[k] for k in untimed} for r in one["acceleration"]["scenes"]] == [
        {k: r[k] for k in untimed} for r in two["acceleration"]["scenes"]
    ]
    assert (tmp_path / "two" / "report.html").exists()
    for stage in ("score-scenes", "ablate-scenes", "accelerate-scenes"):
        assert json.loads((tmp_path / "two" / stage / "manifest.json").read_text())["processes"] == 2


@pytest.mark.slow
def test_killed_two_process_run_resumes_without_losing_or_duplicating(tmp_path: Path) -> None:
    common = ["--data", "synthetic:scenes", "--limit", "24", "--batch-size", "1"]
    killed = tmp_path / "killed"
    args = _corehead("score", *common, "--out", str(killed), "--num-processes", "2")
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((killed / "results").glob("part-r*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    parts = list((killed / "results").glob("part-r*.parquet"))
    assert parts and not (killed / "heads.json").exists(), "the run finished before it could be killed"
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    _run("score", *common, "--out", str(killed), "--num-processes", "2")
    _single("score", *common, "--out", str(tmp_path / "one"))
    _same_results(tmp_path / "one", killed)
    table = pq.read_table(killed / "results")
    keys = list(zip(*(table.column(k).to_pylist() for k in KEYS), strict=True))
    text = AutoConfig.from_pretrained(WEIGHTS).get_text_config()
    # samples x layers x heads x query groups
    assert len(keys) == len(set(keys)) == 24 * text.num_hidden_layers * text.num_attention_heads * 4
    assert json.loads((killed / "manifest.json").read_text())["complete"]


def test_changed_settings_and_another_command_are_refused(tmp_path: Path) -> None:
    common = ["--data", "synthetic:scenes", "--limit", "2", "--out", str(tmp_path / "run")]
    assert runner.invoke(app, ["--quiet", "score", *common]).exit_code == 0
    other = runner.invoke(app, ["--quiet", "score", *common, "--maps", "1"])
    assert other.exit_code != 0 and "other settings (options was" in str(other.exception)
    other_samples = [*common, "--seed", "1"]  # held out, so the folder check is what refuses
    wrong = runner.invoke(app, ["--quiet", "ablate", "--heads", str(tmp_path / "run"), *other_samples, "--k", "1"])
    assert wrong.exit_code != 0 and "holds a score run" in str(wrong.exception)

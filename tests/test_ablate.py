"""The ablation experiment: honest controls, resumable rows, paired effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corehead.data.synthetic import generate
from corehead.experiments.ablate import ablate, conditions, summarize
from corehead.heads import HeadScores, make_headset
from corehead.models.qwen_vl import QwenVLAdapter


def _headset(n_layers: int = 2, n_heads: int = 4):
    mean = np.arange(n_layers * n_heads, dtype=float).reshape(n_layers, n_heads)[::-1].copy()
    scores = HeadScores("ram", "all", mean, mean, mean, 1)
    return make_headset(scores, scores.ranking()[:1], {"count": 1}, "tiny", "synthetic:all", n_kv_heads=1)


def test_controls_have_the_same_size_and_never_include_top_heads() -> None:
    headset = _headset()
    conds = conditions(headset, ks=[2, 3], seeds=4)
    assert [c.name for c in conds[:7]] == ["none", "top", "bottom", "random-0", "random-1", "random-2", "random-3"]
    for c in conds[1:]:
        assert len(c.heads) == c.k and len(set(c.heads)) == c.k
        top = set(headset.ranking[: c.k])
        if c.name == "top":
            assert set(c.heads) == top
        elif c.name == "bottom":
            assert set(c.heads) == set(headset.ranking[-c.k :])
        else:
            assert not set(c.heads) & top
    assert conds == conditions(headset, ks=[2, 3], seeds=4)  # seeded
    assert len({c.heads for c in conds if c.name.startswith("random") and c.k == 2}) > 1
    with pytest.raises(ValueError, match="k must be between"):
        conditions(headset, ks=[8])


def test_rows_resume_and_effects_are_paired(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("scenes", 4, seed=9))
    headset = _headset()
    rows = ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)
    assert len(rows) == 4 * 4  # none, top, bottom, random-0
    lines = (tmp_path / "ablation.jsonl").read_text().splitlines()
    (tmp_path / "ablation.jsonl").write_text("\n".join(lines[:9]) + "\n" + lines[9][:7])  # interrupted
    again = ablate(tiny_builtin, samples, headset, tmp_path, ks=[2], seeds=1, batch_size=2)
    keys = [
        (r["condition"], r["k"], r["id"])
        for r in map(json.loads, (tmp_path / "ablation.jsonl").read_text().splitlines())
    ]
    assert len(keys) == len(set(keys)) == 16
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == sorted(json.dumps(r, sort_keys=True) for r in rows)
    table = {(t["condition"], t["k"]): t for t in summarize(again)}
    base = {r["id"]: r["answer_logprob"] for r in again if r["condition"] == "none"}
    top = {r["id"]: r["answer_logprob"] for r in again if r["condition"] == "top"}
    assert table[("top", 2)]["delta_logprob"] == pytest.approx(np.mean([top[i] - base[i] for i in base]))
    lo, hi = table[("top", 2)]["delta_logprob_ci"]
    assert lo <= table[("top", 2)]["delta_logprob"] <= hi
    assert table[("none", 0)]["delta_logprob"] == 0.0
    assert table[("top", 2)]["delta_logprob"] != 0.0  # ablating heads changes the model

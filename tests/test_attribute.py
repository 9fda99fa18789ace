"""Causal head ranking: exact single-head effects equal `ablate --user-heads` of that head; attribution
patching estimates them (and, for mask-region, from the attention pattern); the run folder serves --heads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke

from corehead.data.synthetic import make_sample
from corehead.experiments.ablate import ablate
from corehead.experiments.attribute import attribute
from corehead.heads import HeadSet
from corehead.models.qwen_vl import QwenVLAdapter

HEADS = [(0, 1), (1, 2), (1, 3)]


def _grid(run: Path) -> np.ndarray:
    return np.asarray([json.loads(line)["effects"] for line in (run / "attribute.jsonl").read_text().splitlines()])


@pytest.mark.parametrize("mode", ["zero", "mask-region"])
def test_exact_effects_equal_ablating_that_head_alone(tiny_builtin: QwenVLAdapter, tmp_path: Path, mode: str) -> None:
    samples = [make_sample("scenes", 0, i) for i in range(4)]
    summary = attribute(tiny_builtin, samples, tmp_path / "attr", method="exact", mode=mode, batch_size=3)
    grid = _grid(tmp_path / "attr")
    assert grid.shape == (4, 2, 4) and summary["n"] == 4
    for head in HEADS:
        rows = ablate(
            tiny_builtin, samples, {"none": []}, tmp_path / f"ablate-{head}", [], 1, mode, (), [head], batch_size=2
        )
        logp = {(r["condition"], r["id"]): r["answer_logprob"] for r in rows}
        expected = [logp["none", s.id] - logp["user", s.id] for s in samples]
        assert np.allclose(grid[:, head[0], head[1]], expected, atol=2e-5), head
    heads = HeadSet.load(tmp_path / "attr" / "heads.json")
    assert heads.metric == f"causal:{mode}:logprob" and heads.scored["n"] == 4
    assert np.allclose(heads.scores["mean"], grid.mean(0))
    assert heads.ranking[0] == tuple(int(i) for i in np.unravel_index(np.argmax(grid.mean(0)), grid.shape[1:]))


@pytest.mark.parametrize("mode", ["zero", "mask-region"])
def test_attribution_patching_estimates_the_exact_effects(
    tiny_builtin: QwenVLAdapter, tmp_path: Path, mode: str
) -> None:
    """On the small random model the linear estimate tracks the exact effect per sample and head; for
    mask-region the head's output change is exact and only what follows is linearised."""
    samples = [make_sample("clips", 0, i) for i in range(4)]
    attribute(tiny_builtin, samples, tmp_path / "exact", method="exact", mode=mode, batch_size=4)
    attribute(tiny_builtin, samples, tmp_path / "atp", method="atp", mode=mode, batch_size=2)
    exact, atp = _grid(tmp_path / "exact"), _grid(tmp_path / "atp")
    assert np.corrcoef(exact.ravel(), atp.ravel())[0, 1] > 0.95
    assert np.abs(atp - exact).max() < 0.5 * np.abs(exact).max()


def test_mean_mode_needs_a_reference_and_paired_modes_are_refused(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = [make_sample("scenes", 0, i) for i in range(2)]
    with pytest.raises(ValueError, match="reference"):
        attribute(tiny_builtin, samples, tmp_path / "a", mode="mean")
    with pytest.raises(ValueError, match="source"):
        attribute(tiny_builtin, samples, tmp_path / "b", mode="patch")
    with pytest.raises(ValueError, match="atp estimates"):
        attribute(tiny_builtin, samples, tmp_path / "c", method="atp", mode="query-zero")
    refs = [make_sample("scenes", 5, i) for i in range(3)]
    exact = attribute(tiny_builtin, samples, tmp_path / "d", method="exact", mode="mean", reference=refs)
    atp = attribute(tiny_builtin, samples, tmp_path / "e", method="atp", mode="mean", reference=refs)
    assert np.corrcoef(np.ravel(exact["effect"]["mean"]), np.ravel(atp["effect"]["mean"]))[0, 1] > 0.9


def test_the_cli_writes_a_head_set_other_commands_take(tmp_path: Path) -> None:
    run = tmp_path / "attr"
    result = invoke("attribute", "--data", "synthetic:pages", "--limit", "2", "--method", "atp", "--out", str(run))
    assert "forwards and backwards" in result.output
    for name in ("attribute.jsonl", "attribute.json", "heads.json", "heads.png", "manifest.json"):
        assert (run / name).exists(), name
    heads = HeadSet.load(run / "heads.json")
    assert heads.metric == "causal:zero:logprob" and len(heads.ranking) == 96
    invoke("heads", "show", str(run))
    invoke(
        "ablate",
        "--heads",
        str(run),
        "--data",
        "synthetic:pages",
        "--limit",
        "3",
        "--k",
        "2",
        "--seeds",
        "1",
        "--controls",
        "bottom",
        "--out",
        str(tmp_path / "ablate"),
    )

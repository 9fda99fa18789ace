"""Agreement of head rankings (RAM vs causal effects): the statistics against independent computations,
their bootstrap intervals, the run-folder readers and `corehead heads compare` on hand-written run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import corehead
from corehead.heads import HeadScores, causal_grid, compare_rankings, make_headset, scored_samples
from corehead.metrics.agreement import average_ranks, rank_agreement, spearman
from tests.helpers import invoke

LAYERS, HEADS = 2, 5  # 10 heads: fraction 0.2 -> k = 2


def test_average_ranks_give_ties_the_mean_of_their_positions() -> None:
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]
    assert average_ranks(np.array([[1.0, 1.0, 1.0], [3.0, 2.0, 1.0]])).tolist() == [[2, 2, 2], [3, 2, 1]]


def test_spearman_matches_a_hand_computed_case_with_ties() -> None:
    # ranks (1..5) and (1, 2, 3.5, 5, 3.5): centred products sum to 8, squares to 10 and 9.5
    rho = spearman(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([5.0, 6.0, 7.0, 8.0, 7.0]))
    assert rho == pytest.approx(8 / np.sqrt(10 * 9.5))


def test_spearman_is_pearson_of_ranks_row_by_row() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (distinct values: no ties)
    expected = [np.corrcoef(ranks(x), ranks(y))[0, 1] for x, y in zip(a, b, strict=True)]
    assert spearman(a, b) == pytest.approx(expected)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def _grid(means: np.ndarray, n: int, spread: float) -> np.ndarray:
    """[n, LAYERS, HEADS]: every sample is the head's mean plus or minus `spread` (alternating by sample), so
    the per-head means are exactly `means` and every value keeps its head's sign when spread is small."""
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    return (means.ravel() + spread * signs * np.ones(means.size)).reshape(n, LAYERS, HEADS)


def test_precision_and_recall_on_grids_with_known_answers() -> None:
    ram = _grid(np.array([5.0, 4.0, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4]), 20, 0.01)  # top 2: heads 0, 1
    causal_means = np.array([0.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # top 2: heads 1, 2
    causal = _grid(causal_means, 20, 0.01)
    causal[:, 0, [0, 4]] = _grid(np.zeros(10), 20, 0.5)[:, 0, [0, 4]]  # unneeded heads: mean 0, CI across 0
    agreement = rank_agreement(ram, causal, fraction=0.2, draws=200)
    assert (agreement.k, agreement.needed) == (2, 3)  # heads 1, 2, 3 have effects above 0 in every sample
    assert agreement.precision == agreement.precision_low == agreement.precision_high == 0.5
    assert agreement.recall == agreement.recall_low == agreement.recall_high == pytest.approx(1 / 3)
    assert (agreement.n_ram, agreement.n_causal) == (20, 20)


def test_recall_is_nan_without_needed_heads_and_k_is_at_least_one() -> None:
    rng = np.random.default_rng(2)
    ram = rng.normal(size=(10, LAYERS, HEADS))
    causal = _grid(np.zeros(10), 10, 1.0)  # every head's mean is 0
    agreement = rank_agreement(ram, causal, fraction=0.01, draws=50)
    assert agreement.k == 1 and agreement.needed == 0
    assert np.isnan([agreement.recall, agreement.recall_low, agreement.recall_high]).all()


def _noisy(truth: np.ndarray, n: int, seed: int) -> np.ndarray:
    return truth + np.random.default_rng(seed).normal(size=(n, *truth.shape))


def test_intervals_hold_the_estimate_shrink_with_samples_and_repeat_for_a_seed() -> None:
    truth = np.random.default_rng(3).normal(size=(4, 12)) * 0.5  # 48 heads: k = 10
    few = rank_agreement(_noisy(truth, 30, 4), _noisy(truth, 30, 5), fraction=0.2, draws=300)
    many = rank_agreement(_noisy(truth, 600, 6), _noisy(truth, 600, 7), fraction=0.2, draws=300)
    # Spearman is left out: resampling adds noise to both sets of means, so its draws sit below the estimate
    for result in (few, many):
        for name in ("precision", "recall"):
            value, low, high = (getattr(result, f"{name}{s}") for s in ("", "_low", "_high"))
            assert low <= value <= high, name
    for name in ("spearman", "precision"):
        assert getattr(many, f"{name}_high") - getattr(many, f"{name}_low") < (
            getattr(few, f"{name}_high") - getattr(few, f"{name}_low")
        )
    again = rank_agreement(_noisy(truth, 30, 4), _noisy(truth, 30, 5), fraction=0.2, draws=300)
    other = rank_agreement(_noisy(truth, 30, 4), _noisy(truth, 30, 5), fraction=0.2, draws=300, seed=1)
    assert again == few
    assert (other.spearman_low, other.spearman_high) != (few.spearman_low, few.spearman_high)


def test_each_grid_is_resampled_on_its_own() -> None:
    """The same grid on both sides: drawing one set of sample indices for both would give Spearman 1 in
    every draw; independent draws of each give lower values."""
    grid = _noisy(np.zeros((LAYERS, HEADS)), 40, 8)
    agreement = rank_agreement(grid, grid, draws=200)
    assert agreement.spearman == pytest.approx(1.0)
    assert agreement.spearman_low < 0.9


def test_missing_values_are_left_out_but_a_head_without_any_is_an_error() -> None:
    rng = np.random.default_rng(9)
    ram, causal = rng.normal(size=(12, LAYERS, HEADS)), rng.normal(size=(12, LAYERS, HEADS))
    ram[0, 1, 2] = np.nan
    expected = spearman(np.nanmean(ram, 0).ravel(), causal.mean(0).ravel())
    assert rank_agreement(ram, causal, draws=50).spearman == pytest.approx(expected)
    ram[:, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"RAM grid: 1 of 10 heads have no value"):
        rank_agreement(ram, causal, draws=50)
    with pytest.raises(ValueError, match="alike"):
        rank_agreement(causal, causal[:, :1])


def _score_run(folder: Path, ids: list[str], grids: dict[tuple[str, str], np.ndarray]) -> Path:
    """A scoring run folder: results/part-00000.parquet with one row per (sample, layer, head, query group)
    holding each metric's grid [samples, layers, heads] of `grids[(metric, group)]`."""
    groups = sorted({group for _, group in grids}, key=[g for _, g in grids].index)
    s, layer, head = (a.ravel() for a in np.indices((len(ids), LAYERS, HEADS)))
    columns: dict[str, list] = {k: [] for k in ("sample_id", "domain", "layer", "head", "query", "ram")}
    columns["ram_minus_distractor"] = []
    for group in groups:
        columns["sample_id"] += [ids[i] for i in s]
        columns["domain"] += ["scenes"] * len(s)
        columns["layer"] += layer.tolist()
        columns["head"] += head.tolist()
        columns["query"] += [group] * len(s)
        for metric in ("ram", "ram_minus_distractor"):
            columns[metric] += grids[(metric, group)][s, layer, head].tolist()
    (folder / "results").mkdir(parents=True)
    pq.write_table(pa.table(columns), folder / "results" / "part-00000.parquet")
    return folder


def _causal_run(folder: Path, ids: list[str], effects: np.ndarray, modes: list[str] | None = None) -> Path:
    """A causal run folder: attribute.jsonl with one row per sample."""
    folder.mkdir(parents=True)
    modes = modes or ["zero"] * len(ids)
    rows = [
        {"id": sid, "method": "exact", "mode": mode, "target": "logprob", "clean": -1.0, "effects": grid.tolist()}
        for sid, mode, grid in zip(ids, modes, effects, strict=True)
    ]
    (folder / "attribute.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _headset(folder: Path, ids: list[str]) -> None:
    """heads.json recording `ids` as the scored samples."""
    mean = np.arange(LAYERS * HEADS, dtype=float).reshape(LAYERS, HEADS)
    scores = HeadScores("ram", "question", mean, mean, mean, len(ids))
    headset = make_headset(scores, [(1, 4)], {"count": 1}, "m", "d", HEADS, scored=scored_samples("d", 0, ids))
    headset.save(folder / "heads.json")


EFFECT = np.linspace(-1.0, 3.0, LAYERS * HEADS).reshape(LAYERS, HEADS)  # 7 heads above 0


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """A scoring run whose `ram:question` ranks heads as the causal effects do, `ram_minus_distractor:question`
    in reverse, and `answer` rows at random; and a causal run on other samples."""
    ram_ids, causal_ids = [f"r{i}" for i in range(8)], [f"c{i}" for i in range(6)]
    rng = np.random.default_rng(10)
    grids = {
        ("ram", "question"): EFFECT * 0.1 + rng.normal(size=(8, LAYERS, HEADS)) * 1e-4,
        ("ram_minus_distractor", "question"): -(EFFECT * 0.1) + rng.normal(size=(8, LAYERS, HEADS)) * 1e-4,
        ("ram", "answer"): rng.normal(size=(8, LAYERS, HEADS)),
        ("ram_minus_distractor", "answer"): rng.normal(size=(8, LAYERS, HEADS)),
    }
    ram = _score_run(tmp_path / "score", ram_ids, grids)
    causal = _causal_run(tmp_path / "causal", causal_ids, EFFECT + rng.normal(size=(6, LAYERS, HEADS)) * 0.01)
    return ram, causal


def test_causal_grid_reads_the_rows_and_refuses_mixed_modes(runs: tuple[Path, Path], tmp_path: Path) -> None:
    ids, grid, kind = causal_grid(runs[1])
    assert ids == [f"c{i}" for i in range(6)] and grid.shape == (6, LAYERS, HEADS)
    assert np.abs(grid.mean(0) - EFFECT).max() < 0.05
    assert kind == {"method": "exact", "mode": "zero", "target": "logprob"}
    with pytest.raises(FileNotFoundError, match=r"attribute\.jsonl"):
        causal_grid(runs[0])
    mixed = _causal_run(tmp_path / "mixed", ["a", "b"], np.zeros((2, LAYERS, HEADS)), ["zero", "mean"])
    with pytest.raises(ValueError, match=r"attribute\.jsonl mixes .*exact/mean/logprob, exact/zero/logprob"):
        causal_grid(mixed)


def test_compare_rankings_scores_every_metric_and_query_group(runs: tuple[Path, Path]) -> None:
    rows = {row["ranking"]: row for row in compare_rankings(*runs, fraction=0.2, draws=100)}
    assert list(rows) == ["ram:question", "ram_minus_distractor:question", "ram:answer", "ram_minus_distractor:answer"]
    same, reverse = rows["ram:question"], rows["ram_minus_distractor:question"]
    assert same["spearman"] == pytest.approx(1.0) and same["precision"] == 1.0 and same["recall"] == 2 / 7
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["precision"] == 0.0 and reverse["recall"] == 0.0
    assert {row["k"] for row in rows.values()} == {2} and {row["needed"] for row in rows.values()} == {7}
    assert (same["n_ram"], same["n_causal"]) == (8, 6)
    assert "overlap" not in same  # neither run has heads.json


def test_overlap_counts_the_samples_both_runs_scored(runs: tuple[Path, Path]) -> None:
    _headset(runs[0], ["r0", "r1", "shared0", "shared1"])
    _headset(runs[1], ["c0", "shared0", "shared1"])
    assert {row["overlap"] for row in compare_rankings(*runs, draws=20)} == {2}
    assert corehead.compare_rankings is compare_rankings


def test_cli_prints_the_agreement_table_and_json(runs: tuple[Path, Path]) -> None:
    table = invoke("heads", "compare", str(runs[0]), str(runs[1]), "--fraction", "0.2", "--draws", "100").output
    assert "RAM rankings vs causal effects" in table and "7 heads needed" in table
    line = next(line for line in table.splitlines() if "ram_minus_distractor:question" in line)
    assert "-1.000" in line and "0.000 [0.000, 0.000]" in line
    data = json.loads(invoke("heads", "compare", str(runs[0]), str(runs[1]), "--draws", "50", "--json").output)
    assert [row["ranking"] for row in data["rankings"]][:2] == ["ram:question", "ram_minus_distractor:question"]
    assert data["rankings"][0]["k"] == 1  # fraction 0.05 of 10 heads


def test_cli_shows_recall_as_undefined_without_needed_heads(runs: tuple[Path, Path], tmp_path: Path) -> None:
    flat = _causal_run(
        tmp_path / "flat", ["f0", "f1", "f2", "f3"], _grid(np.linspace(-0.1, 0.1, LAYERS * HEADS), 4, 1.0)
    )
    data = json.loads(invoke("heads", "compare", str(runs[0]), str(flat), "--draws", "50", "--json").output)
    assert {(row["needed"], row["recall"], row["recall_low"]) for row in data["rankings"]} == {(0, None, None)}
    table = invoke("heads", "compare", str(runs[0]), str(flat), "--draws", "50").output
    assert "0 heads needed" in table and table.count("n/a") == 4


def test_cli_compares_two_head_sets_as_before(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _headset(tmp_path / name, ["x"])
    data = json.loads(invoke("heads", "compare", str(tmp_path / "a"), str(tmp_path / "b")).output)
    assert data == {"jaccard": 1.0, "spearman": pytest.approx(1.0), "shared": 1.0}

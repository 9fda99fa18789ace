"""Scoring runs (resumable results), head selection and the HeadSet file with its exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corehead.data.synthetic import generate
from corehead.experiments.score import ScoreOptions, score
from corehead.heads import (
    HeadScores,
    HeadSet,
    from_duo_tsv,
    from_retrieval_head,
    make_headset,
    overlap,
    select_heads,
    to_duo_tsv,
    to_retrieval_head,
)
from corehead.models.qwen_vl import QwenVLAdapter


def _key_rows(table) -> tuple[list[tuple], np.ndarray]:
    """The rows' keys in order, and their (ram, visual_mass) values in that order."""
    cols = ["sample_id", "layer", "head", "query", "ram", "visual_mass"]
    rows = sorted(zip(*(table.column(c).to_pylist() for c in cols), strict=True))
    return [r[:4] for r in rows], np.array([r[4:] for r in rows])


def _same_rows(a, b) -> None:
    """Same rows; values equal up to float32 rounding (a sample padded in another batch differs there)."""
    keys_a, values_a = _key_rows(a)
    keys_b, values_b = _key_rows(b)
    assert keys_a == keys_b
    np.testing.assert_allclose(values_a, values_b, rtol=0, atol=2e-6)


def test_interrupted_run_resumes_to_the_same_rows(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("all", 6, seed=2))
    options = ScoreOptions(batch_size=2)
    whole = score(tiny_builtin, samples, tmp_path / "whole", "synthetic:all", options)
    # interrupted after two batches: a finished part for the first 4 samples, a torn temp file
    score(tiny_builtin, samples[:4], tmp_path / "parts", "synthetic:all", options)
    (tmp_path / "parts" / "results" / ".part-00002.tmp").write_bytes(b"torn")
    resumed = score(tiny_builtin, samples, tmp_path / "parts", "synthetic:all", options)
    _same_rows(resumed.table, whole.table)
    n_layers = tiny_builtin.model.config.get_text_config().num_hidden_layers
    n_heads = tiny_builtin.model.config.get_text_config().num_attention_heads
    assert resumed.table.num_rows == 6 * n_layers * n_heads * 4  # samples x layers x heads x query groups
    on_disk = pq.read_table(tmp_path / "parts" / "results")
    assert on_disk.num_rows == resumed.table.num_rows  # no duplicated rows
    with pytest.raises(ValueError, match="other settings"):
        score(tiny_builtin, samples, tmp_path / "parts", "synthetic:scenes", options)


def test_headset_selection_exports_and_overlap(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    samples = list(generate("scenes", 4, seed=3))
    run = score(tiny_builtin, samples, tmp_path / "run", "synthetic:scenes", ScoreOptions(batch_size=4))
    scores = HeadScores.from_table(run.table, metric="ram", query="question")
    assert scores.mean.shape == (2, 4) and scores.n_samples == 4
    assert np.all(scores.low <= scores.mean + 1e-9) and np.all(scores.mean <= scores.high + 1e-9)
    # the mean is the plain mean over samples of the question-row RAM
    rows = [r for r in run.table.to_pylist() if r["query"] == "question" and r["layer"] == 1 and r["head"] == 2]
    assert scores.mean[1, 2] == pytest.approx(np.mean([r["ram"] for r in rows]), rel=1e-5)
    top, how = select_heads(scores, fraction=0.25)
    assert len(top) == 2 and how == {"fraction": 0.25} and top == scores.ranking()[:2]
    assert select_heads(scores, count=3)[0] == scores.ranking()[:3]
    headset = make_headset(scores, top, how, model="tiny", dataset="synthetic:scenes", n_kv_heads=1)
    loaded = HeadSet.load(headset.save(tmp_path / "heads.json"))
    assert loaded.selected == top and loaded.ranking == scores.ranking() and loaded.groups == 4
    assert np.allclose(loaded.kv_scores("max")[:, 0], scores.mean.max(axis=1))
    assert np.allclose(loaded.kv_scores("sum")[:, 0], scores.mean.sum(axis=1))
    exported = to_retrieval_head(loaded)
    assert set(exported) == {f"{l_}-{h}" for l_ in range(2) for h in range(4)}
    assert exported["1-2"] == [pytest.approx(scores.mean[1, 2])]
    tsv = [line.split("\t") for line in to_duo_tsv(loaded).splitlines()]
    assert len(tsv) == 2 and all(len(row) == 1 for row in tsv)
    assert [int(row[0]) for row in tsv] == [int(any(l_ == i for l_, _ in top)) for i in range(2)]
    assert overlap(loaded, loaded)["jaccard"] == 1.0
    # importing peers' files gives back the same ranking (Retrieval-Head) and the same KV decisions (Duo)
    back = from_retrieval_head(exported, n_kv_heads=1, fraction=0.25)
    assert back.ranking == loaded.ranking and back.selected == loaded.selected
    duo = from_duo_tsv(to_duo_tsv(loaded), n_heads=4)
    assert to_duo_tsv(duo) == to_duo_tsv(loaded)
    assert {layer for layer, _ in duo.selected} == {layer for layer, _ in top}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a corehead head set"):
        HeadSet.load(bad)


def test_planted_head_ranks_first(tiny_qwen2_vl: QwenVLAdapter, tmp_path: Path) -> None:
    """Set one head's query/key weights so that it attends to the region's tokens: it must rank first."""
    from planted import HEAD, plant_head, square_samples

    samples = square_samples(6)
    adapter = plant_head(tiny_qwen2_vl, samples[0])
    run = score(adapter, samples, tmp_path / "planted", "planted", ScoreOptions(batch_size=3))
    scores = HeadScores.from_table(run.table, metric="ram", query="all")
    assert scores.ranking()[0] == (0, HEAD)
    assert scores.mean[0, HEAD] > 0.5 and scores.mean[0, HEAD] > 3 * np.delete(scores.mean.ravel(), HEAD).max()


def test_correct_only_ranks_on_correctly_answered_samples(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    import copy

    from corehead.experiments.score import score_and_select

    samples = list(generate("scenes", 6, seed=7))
    right = {s.id for s in samples[::2]}
    adapter = copy.copy(tiny_builtin)  # an oracle for half the samples
    adapter.generate = lambda batch, max_new_tokens=16: [s.answer if s.id in right else "no" for s in batch]  # type: ignore[method-assign]
    everyone, run = score_and_select(adapter, samples, tmp_path, "synthetic:scenes", fraction=0.25)
    correct, _ = score_and_select(adapter, samples, tmp_path, "synthetic:scenes", fraction=0.25, correct_only=True)
    assert everyone.n_samples == 6 and correct.n_samples == 3
    expected = HeadScores.from_table(run.table, only=right)
    assert np.allclose(correct.scores["mean"], expected.mean)
    assert (tmp_path / "heads.json").exists() and (tmp_path / "heads-correct.json").exists()
    assert HeadSet.load(tmp_path / "heads-correct.json").options["correct_only"] is True


def test_unit_masses_and_maps_are_written_per_sample(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """unit_mass sums to the visual mass; kept maps reproduce RAM and belong to the right sample."""
    from corehead.runfolder import RunFolder

    samples = [next(generate(d, 1, seed=8)) for d in ("scenes", "pages", "clips")]
    run = score(tiny_builtin, samples, tmp_path, "maps", ScoreOptions(batch_size=2, maps=2))
    rows = run.table.to_pylist()
    for row in rows:
        sample = next(s for s in samples if s.id == row["sample_id"])
        assert len(row["unit_mass"]) == len(sample.units)
        assert sum(row["unit_mass"]) == pytest.approx(row["visual_mass"], abs=1e-5)
    for sample in samples[:2]:  # maps for the first two only
        maps = RunFolder(tmp_path).load_maps(sample.id)
        n = maps["attention"].shape[-1]
        assert maps["sizes"].tolist() == [[u.width, u.height] for u in sample.units]
        assert maps["image0"].dtype == np.uint8 and max(maps["image0"].shape[:2]) <= 384
        assert maps["cells"].shape == (n, 4) and maps["region"].shape == (n,) and maps["region"].any()
        ram = (maps["attention"].astype(np.float64) * maps["region"]).sum(-1)
        for row in (r for r in rows if r["sample_id"] == sample.id and r["query"] == "question"):
            assert ram[row["layer"], row["head"], 1] == pytest.approx(row["ram"], abs=2e-3)  # float16 maps
    with pytest.raises(KeyError, match="no maps for sample"):
        RunFolder(tmp_path).load_maps(samples[2].id)


def _fell_back(sample_regions, token_map, min_overlap: float) -> int:
    """How many regions no cell of their unit has `min_overlap` of its area inside, written out."""
    count = 0
    for region in sample_regions:
        best = 0.0
        for j in np.flatnonzero(token_map.covers_unit(region.unit)):
            x0, y0, x1, y1 = token_map.cells[j]
            bx0, by0, bx1, by1 = region.box
            inside = max(0.0, min(x1, bx1) - max(x0, bx0)) * max(0.0, min(y1, by1) - max(y0, by0))
            best = max(best, inside / ((x1 - x0) * (y1 - y0)))
        count += best < min_overlap
    return count


def test_headset_records_its_samples_and_fallbacks(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """heads.json says what was scored (ids, digest, dataset, seed) and how many regions fell back, the same
    after a resumed run; the manifest has the counts too; files without them still load."""
    import hashlib

    from corehead.experiments.score import score_and_select
    from corehead.runfolder import RunFolder

    samples = list(generate("all", 6, seed=5))
    options = ScoreOptions(batch_size=2, min_overlap=0.8)
    score_and_select(tiny_builtin, samples[:2], tmp_path, "synthetic:all", options=options, seed=5)  # interrupted
    headset, run = score_and_select(tiny_builtin, samples, tmp_path, "synthetic:all", options=options, seed=5)
    maps = [tiny_builtin.encode(s).token_map for s in samples]
    fell = sum(_fell_back(s.regions, m, 0.8) for s, m in zip(samples, maps, strict=True))
    fell_d = sum(_fell_back(s.distractors, m, 0.8) for s, m in zip(samples, maps, strict=True))
    n_regions, n_dist = sum(len(s.regions) for s in samples), sum(len(s.distractors) for s in samples)
    assert fell > 0 and fell_d > 0  # at 0.8 some boxes are too small for any cell
    assert (headset.fallbacks, headset.regions, headset.distractor_fallbacks) == (fell, n_regions, fell_d)
    assert headset.distractor_regions == n_dist and headset.fallback_rate == pytest.approx(fell / n_regions)
    assert run.fallbacks == fell and headset.query == "question"  # the default query group
    ids = sorted(s.id for s in samples)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert headset.scored == {"dataset": "synthetic:all", "seed": 5, "n": 6, "ids": ids, "digest": digest}
    saved = json.loads((tmp_path / "heads.json").read_text())
    assert saved["scored"] == headset.scored and saved["fallback_rate"] == pytest.approx(fell / n_regions)
    loaded = HeadSet.load(tmp_path / "heads.json")
    assert (loaded.scored, loaded.fallbacks, loaded.regions) == (headset.scored, fell, n_regions)
    mapping = RunFolder(tmp_path).manifest()["region_mapping"]
    counts = {"regions": n_regions, "fallbacks": fell, "distractor_regions": n_dist, "distractor_fallbacks": fell_d}
    assert mapping == {**counts, "fallback_rate": pytest.approx(fell / n_regions)}
    for key in ("scored", "fallbacks", "regions", "fallback_rate", "distractor_fallbacks", "distractor_regions"):
        del saved[key]
    (tmp_path / "old.json").write_text(json.dumps(saved))
    old = HeadSet.load(tmp_path / "old.json")
    assert old.scored == {} and old.regions == 0 and np.isnan(old.fallback_rate) and old.ranking == headset.ranking


def test_cli_score_overlap_weighting_and_fallback_rate(tmp_path: Path) -> None:
    from helpers import invoke

    common = ["--quiet", "score", "--model", "builtin", "--data", "synthetic:scenes", "--limit", "3", "--seed", "4"]
    out = json.loads(invoke(*common, "--min-overlap", "0.95", "--out", str(tmp_path / "a"), "--json").stdout)
    heads = json.loads((tmp_path / "a" / "heads.json").read_text())
    assert heads["options"]["min_overlap"] == 0.95 and heads["query"] == "question" and heads["scored"]["seed"] == 4
    assert out["region_mapping"]["regions"] == 3 and out["region_mapping"]["fallbacks"] == heads["fallbacks"]
    shown = invoke(*common, "--region-weighting", "fractional", "--out", str(tmp_path / "b")).stdout
    assert "region mapping: 3 evidence regions weighted by each token's share inside the box" in shown
    assert json.loads((tmp_path / "b" / "heads.json").read_text())["options"]["region_weighting"] == "fractional"
    shown = invoke(*common, "--out", str(tmp_path / "c")).stdout
    assert "evidence regions (" in shown and "fell back to their best-overlapping cells" in shown

"""Distractor mass per object, and fractional region weighting, against hand computations from eager attention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from corehead.data.sample import Region, Sample, SampleError, objects, read_jsonl, validate, write_jsonl
from corehead.data.synthetic import make_sample, make_scene
from corehead.experiments.score import ScoreOptions, score
from corehead.models.base import Encoded
from corehead.models.qwen_vl import QwenVLAdapter


def _eager_maps(adapter: QwenVLAdapter, encoded: list[Encoded], group: str) -> list[np.ndarray]:
    """Per sample, [layers, heads, N]: eager attention of the group's rows, averaged, on each visual token."""
    batch = adapter.collate(encoded)
    width = batch["input_ids"].shape[1]
    adapter.model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            attentions = adapter.model(**batch, output_attentions=True).attentions
    finally:
        adapter.model.set_attn_implementation({"text_config": "sdpa"})
    out = []
    for b, e in enumerate(encoded):
        shift = width - e.length
        rows = (e.question if group == "question" else np.array([e.prompt_end])) + shift
        per_layer = [a[b].double().numpy()[:, rows].mean(axis=1)[:, e.token_map.positions + shift] for a in attentions]
        out.append(np.stack(per_layer))
    return out


def _rows(table, sample_id: str, group: str, stat: str) -> np.ndarray:
    """[layers, heads] of one statistic of a scoring run's rows."""
    rows = [r for r in table.to_pylist() if r["sample_id"] == sample_id and r["query"] == group]
    grid = np.zeros((1 + max(r["layer"] for r in rows), 1 + max(r["head"] for r in rows)))
    for r in rows:
        grid[r["layer"], r["head"]] = r[stat]
    return grid


def test_clip_distractor_mass_is_the_mean_over_objects(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """A clip question's distractors are 2 objects with one box on each of 2 frames, and the 2 frames share
    their tokens (temporal patches): per-object mass, by hand, then its mean over the 2 objects."""
    sample = make_sample("clips", 11, 0)
    assert len(sample.distractors) == 4 and len(objects(sample.distractors)) == 2
    run = score(tiny_builtin, [sample], tmp_path, "clips", ScoreOptions(batch_size=1))
    e = tiny_builtin.encode(sample, answer=True)
    tm = e.token_map
    per_object: dict[str, set[int]] = {}
    for region in sample.distractors:
        per_object.setdefault(str(region.object), set()).update(tm.region_tokens(region)[0].tolist())
    assert len(per_object) == 2
    region = sorted({int(j) for r in sample.regions for j in tm.region_tokens(r)[0]})
    union = sorted(set().union(*per_object.values()))
    for group in ("question", "prompt_end"):
        amap = _eager_maps(tiny_builtin, [e], group)[0]
        want = np.mean([amap[..., sorted(tokens)].sum(-1) for tokens in per_object.values()], axis=0)
        got = _rows(run.table, sample.id, group, "distractor_mass")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        ram = amap[..., region].sum(-1)
        np.testing.assert_allclose(_rows(run.table, sample.id, group, "ram_minus_distractor"), ram - want, atol=1e-5)
        # the former definition (union mass / 4 regions) was half of it: here the objects share no token
        assert not set.intersection(*per_object.values())
        np.testing.assert_allclose(want, 2 * amap[..., union].sum(-1) / 4, rtol=1e-9)


def _share(cell: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """The share of a cell (x0, y0, x1, y1) inside a box, written out."""
    width = max(0.0, min(cell[2], box[2]) - max(cell[0], box[0]))
    height = max(0.0, min(cell[3], box[3]) - max(cell[1], box[1]))
    return width * height / ((cell[2] - cell[0]) * (cell[3] - cell[1]))


def _fractional(e: Encoded, regions: list[Region]) -> np.ndarray:
    """Each token's weight: the largest share of its cell inside any of the regions' boxes on a frame it covers."""
    tm = e.token_map
    weights = np.zeros(len(tm))
    for j in range(len(tm)):
        for r in regions:
            if tm.units[j] <= r.unit < tm.units[j] + tm.spans[j]:
                assert r.box is not None
                weights[j] = max(weights[j], _share(tm.cells[j], r.box))
    return weights


def test_fractional_weighting_equals_a_hand_computation(tiny_builtin: QwenVLAdapter, tmp_path: Path) -> None:
    """RAM = sum_j A_j f_j with f_j the share of token j's cell in the box; region_share, lift and
    top_in_region read the same weights; the distractor mass is the mean over objects of sum_j A_j g_oj."""
    samples = [make_sample("scenes", 12, 0), make_sample("clips", 12, 1)]  # padded together in one batch
    run = score(tiny_builtin, samples, tmp_path, "mixed", ScoreOptions(batch_size=2, region_weighting="fractional"))
    encoded = [tiny_builtin.encode(s, answer=True) for s in samples]
    maps = _eager_maps(tiny_builtin, encoded, "question")
    for s, e, amap in zip(samples, encoded, maps, strict=True):
        f = _fractional(e, s.regions)
        assert ((f > 0) & (f < 1)).any()  # some cells count in part
        ram = (amap * f).sum(-1)
        share = ram / amap.sum(-1)
        top = np.take_along_axis(np.broadcast_to(f, amap.shape), amap.argmax(-1)[..., None], -1)[..., 0]
        groups = [[s.distractors[k] for k in group] for group in objects(s.distractors)]
        dist = np.mean([(amap * _fractional(e, g)).sum(-1) for g in groups], axis=0)
        want = {"ram": ram, "region_share": share, "lift": share / (f.sum() / len(f)), "top_in_region": top}
        want |= {"distractor_mass": dist, "ram_minus_distractor": ram - dist}
        for stat, value in want.items():
            np.testing.assert_allclose(_rows(run.table, s.id, "question", stat), value, rtol=1e-4, atol=1e-6)
    assert set(run.table.column("fallbacks").to_pylist()) == {0}  # no threshold: nothing falls back


def test_object_ids_travel_through_jsonl_and_are_validated(tmp_path: Path) -> None:
    sample = make_sample("clips", 2, 0)
    others = {thing.shape for thing in make_scene("clips", 2, 0).things} - {sample.meta["target"]}
    frames = sorted(r.unit for r in sample.regions)
    by_object = {
        r.object: sorted(d.unit for d in sample.distractors if d.object == r.object) for r in sample.distractors
    }
    assert by_object == dict.fromkeys(others, frames)  # each other object, once on each frame of the question
    back = next(read_jsonl(write_jsonl([sample], tmp_path)))
    assert back.distractors == sample.distractors and all(r.object for r in back.distractors)
    # files without object ids load as before: each region an object of its own
    plain = tmp_path / "plain.jsonl"
    text = (tmp_path / "samples.jsonl").read_text()
    for obj in {r.object for r in sample.distractors}:
        text = text.replace(f', "object": "{obj}"', "")
    plain.write_text(text)
    old = next(read_jsonl(plain))
    assert [r.object for r in old.distractors] == [None] * 4 and objects(old.distractors) == [[0], [1], [2], [3]]
    assert objects([Region(0, None, "a"), Region(1), Region(1, None, "a")]) == [[0, 2], [1]]
    bad = Sample(sample.id, sample.units, sample.question, sample.answer, sample.regions, [Region(0, None, " ")])
    with pytest.raises(SampleError, match=r"'distractors\[0\].object': an object id is a non-empty string"):
        validate(bad)

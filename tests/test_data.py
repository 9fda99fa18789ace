"""Tests of the data model (sample.py), load_dataset and the synthetic domains."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corehead.data import load_dataset, synthetic
from corehead.data.sample import (
    LoadReport,
    Region,
    Sample,
    SampleError,
    VisualUnit,
    read_jsonl,
    validate,
    write_jsonl,
)

N_PER_DOMAIN = 20
# Shapes whose centre pixel is not the fill colour: a ring has a hole, an hourglass only touches there.
HOLLOW_AT_CENTRE = {"ring", "hourglass"}


def pixels(unit: VisualUnit) -> np.ndarray:
    return np.asarray(unit.load())


def centre_pixel(unit: VisualUnit, box: tuple[float, float, float, float]) -> tuple[int, ...]:
    x0, y0, x1, y1 = box
    return tuple(int(v) for v in pixels(unit)[int((y0 + y1) / 2), int((x0 + x1) / 2)])


def box_inside(box: tuple[float, ...], unit: VisualUnit) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 < x1 <= unit.width and 0 <= y0 < y1 <= unit.height


def overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def same_content(a: Sample, b: Sample) -> bool:
    """Same question, answer, regions, distractors and identical pixels in every unit."""
    if (a.question, a.answer, a.regions, a.distractors) != (b.question, b.answer, b.regions, b.distractors):
        return False
    if len(a.units) != len(b.units):
        return False
    return all(np.array_equal(pixels(u), pixels(v)) for u, v in zip(a.units, b.units, strict=True))


# ------------------------------------------------------------------------------------ synthetic


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_synthetic_is_deterministic_for_a_seed(domain: str) -> None:
    first = list(synthetic.generate(domain, 4, seed=7))
    second = list(synthetic.generate(domain, 4, seed=7))
    assert len(first) == len(second) == 4
    for a, b in zip(first, second, strict=True):
        assert a.id == b.id
        assert a.question == b.question
        assert a.answer == b.answer
        assert a.regions == b.regions
        assert a.distractors == b.distractors
        assert a.units == b.units  # kind, source, size, page/frame/timestamp (pixels are compare=False)
        for u, v in zip(a.units, b.units, strict=True):
            assert np.array_equal(pixels(u), pixels(v))


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_synthetic_differs_across_seeds_and_splits(domain: str) -> None:
    base = list(synthetic.generate(domain, 4, seed=0))
    other_seed = list(synthetic.generate(domain, 4, seed=1))
    train = list(synthetic.generate(domain, 4, seed=0, split="train"))
    assert [s.id for s in base] != [s.id for s in other_seed]
    # Not only the ids: the content differs (every pair, since the images are random).
    assert not any(same_content(a, b) for a, b in zip(base, other_seed, strict=True))
    assert not any(same_content(a, b) for a, b in zip(base, train, strict=True))
    assert [s.regions for s in base] != [s.regions for s in train]


def test_synthetic_rejects_unknown_domain_and_split() -> None:
    with pytest.raises(ValueError, match="nope"):
        synthetic.make_sample("nope", 0, 0)
    with pytest.raises(ValueError, match="test"):
        synthetic.make_sample("scenes", 0, 0, split="test")


def _check_common(sample: Sample, domain: str) -> None:
    validate(sample)
    assert sample.domain == domain
    assert sample.id.startswith(f"{domain}-s0-")
    assert sample.regions, sample.id
    assert sample.distractors, f"{sample.id} has no distractors"
    for region in [*sample.regions, *sample.distractors]:
        assert 0 <= region.unit < len(sample.units)
        assert region.box is not None
        assert box_inside(region.box, sample.units[region.unit]), (sample.id, region)
    # The question names the target (a shape), never the answer.
    target = sample.meta["target"]
    assert target in synthetic.SHAPES
    assert target in sample.question
    # The evidence does not overlap any distractor in the same unit.
    for r in sample.regions:
        for d in sample.distractors:
            if d.unit == r.unit:
                assert not overlaps(r.box, d.box), (sample.id, r, d)


def test_synthetic_scenes_samples_are_valid_and_grounded() -> None:
    samples = list(synthetic.generate("scenes", N_PER_DOMAIN))
    assert len(samples) == N_PER_DOMAIN
    checked_centres = 0
    for s in samples:
        _check_common(s, "scenes")
        assert len(s.units) == 1
        unit = s.units[0]
        assert (unit.kind, unit.width, unit.height) == ("image", synthetic.SCENE_SIZE, synthetic.SCENE_SIZE)
        assert s.answer in synthetic.COLOURS
        assert len(s.regions) == 1
        assert 5 <= len(s.distractors) <= 9  # 6-10 shapes, one of them the target
        # Retrieval is needed: the region really holds the answer's colour.
        (region,) = s.regions
        colour = synthetic.COLOURS[s.answer]
        x0, y0, x1, y1 = (int(v) for v in region.box)
        crop = pixels(unit)[y0:y1, x0:x1]
        assert (crop == colour).all(axis=-1).sum() > 50, s.id
        if s.meta["target"] not in HOLLOW_AT_CENTRE:
            assert centre_pixel(unit, region.box) == colour, s.id
            checked_centres += 1
    assert checked_centres >= N_PER_DOMAIN // 2  # the centre check did run for most samples


def test_synthetic_pages_samples_are_valid_and_grounded() -> None:
    samples = list(synthetic.generate("pages", N_PER_DOMAIN))
    for s in samples:
        _check_common(s, "pages")
        assert 2 <= len(s.units) <= 3
        for i, unit in enumerate(s.units):
            assert unit.kind == "page"
            assert unit.page == i + 1  # 1-based and in order
            assert unit.frame is None and unit.timestamp is None
            assert (unit.width, unit.height) == synthetic.PAGE_SIZE
        assert s.answer in synthetic.DIGITS
        (region,) = s.regions
        # Distractors are the other lines of the evidence page.
        assert {d.unit for d in s.distractors} == {region.unit}
        # The evidence line holds the value's ink (the digits are drawn in (10, 10, 10)).
        x0, y0, x1, y1 = (int(v) for v in region.box)
        crop = pixels(s.units[region.unit])[y0:y1, x0:x1]
        assert (crop == (10, 10, 10)).all(axis=-1).any(), s.id


def test_synthetic_clips_samples_are_valid_and_grounded() -> None:
    samples = list(synthetic.generate("clips", N_PER_DOMAIN))
    for s in samples:
        _check_common(s, "clips")
        assert len(s.units) == synthetic.CLIP_FRAMES
        for i, unit in enumerate(s.units):
            assert unit.kind == "frame"
            assert unit.frame == i  # 0-based, consecutive
            assert unit.timestamp == pytest.approx(i / synthetic.CLIP_FPS)
            assert unit.page is None
        assert s.answer in synthetic.COLOURS
        # A tube: one box in each of the SEGMENT_FRAMES frames of one segment.
        frames = [r.unit for r in s.regions]
        assert len(frames) == synthetic.SEGMENT_FRAMES == 2
        assert frames[0] % synthetic.SEGMENT_FRAMES == 0
        assert frames == list(range(frames[0], frames[0] + synthetic.SEGMENT_FRAMES))
        # The question's time span [t0, t1) is exactly those frames' timestamps.
        match = re.search(r"between (\d+) and (\d+) seconds", s.question, flags=re.IGNORECASE)
        assert match, s.question
        t0, t1 = int(match.group(1)), int(match.group(2))
        in_span = [u.frame for u in s.units if t0 <= u.timestamp < t1]
        assert in_span == frames, (s.question, frames)
        # Distractors are the other objects in the same frames.
        assert {d.unit for d in s.distractors} == set(frames)
        assert len(s.distractors) == 2 * len(frames)
        colour = synthetic.COLOURS[s.answer]
        for r in s.regions:
            x0, y0, x1, y1 = (int(v) for v in r.box)
            crop = pixels(s.units[r.unit])[y0 : y1 + 1, x0 : x1 + 1]
            assert (crop == colour).all(axis=-1).sum() > 20, (s.id, r)
            if s.meta["target"] not in HOLLOW_AT_CENTRE:
                assert centre_pixel(s.units[r.unit], r.box) == colour, (s.id, r)


# ---------------------------------------------------------------------------------- load_dataset


def test_load_dataset_synthetic_all_cycles_domains() -> None:
    samples = load_dataset("synthetic:all", n=6, seed=2)
    assert [s.domain for s in samples] == ["scenes", "pages", "clips"] * 2
    assert len({s.id for s in samples}) == 6
    assert len(load_dataset("synthetic:pages", n=3)) == 3


def test_load_dataset_synthetic_default_n_and_seed() -> None:
    samples = load_dataset("synthetic:scenes")
    assert len(samples) == 100
    assert samples[0].id == "scenes-s0-00000"
    assert load_dataset("synthetic:scenes", n=1, seed=5)[0].id == "scenes-s5-00000"


def test_load_dataset_errors_on_unknown_spec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bogus"):
        load_dataset("synthetic:bogus", n=1)
    with pytest.raises(FileNotFoundError, match="no dataset"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="no dataset"):
        load_dataset(str(tmp_path))  # a folder without samples.jsonl


def _assert_round_trip(original: list[Sample], loaded: list[Sample]) -> None:
    assert len(loaded) == len(original)
    for a, b in zip(original, loaded, strict=True):
        assert b.id == a.id
        assert b.question == a.question
        assert b.answer == a.answer
        assert b.regions == a.regions
        assert b.distractors == a.distractors
        assert b.meta == a.meta
        assert b.domain == a.domain
        assert len(b.units) == len(a.units)
        for u, v in zip(a.units, b.units, strict=True):
            assert (v.kind, v.width, v.height) == (u.kind, u.width, u.height)
            assert (v.page, v.frame, v.timestamp) == (u.page, u.frame, u.timestamp)
            assert v.image is None
            assert Path(v.source).is_absolute() and Path(v.source).is_file()
            assert np.array_equal(pixels(v), pixels(u))


def test_jsonl_round_trip(tmp_path: Path) -> None:
    original = list(synthetic.generate("all", 6, seed=3))
    target = write_jsonl(original, tmp_path)
    assert target == tmp_path / "samples.jsonl"

    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    for line in lines:
        obj = json.loads(line)
        for unit in obj["units"]:
            source = unit["source"]
            assert source.startswith("images/") and source.endswith(".png"), source
            assert not Path(source).is_absolute()
            assert (tmp_path / source).is_file()

    _assert_round_trip(original, load_dataset(str(tmp_path)))  # the folder
    _assert_round_trip(original, load_dataset(str(target)))  # the file itself
    assert [s.id for s in load_dataset(str(tmp_path), n=2)] == [s.id for s in original[:2]]


def test_rewriting_loaded_samples_elsewhere_keeps_their_images(tmp_path: Path) -> None:
    original = list(synthetic.generate("pages", 2))
    write_jsonl(original, tmp_path / "a")
    loaded = load_dataset(str(tmp_path / "a"))
    write_jsonl(loaded, tmp_path / "b")
    assert not (tmp_path / "b" / "images").exists()  # nothing to copy: the sources are files already
    again = load_dataset(str(tmp_path / "b"))
    _assert_round_trip(original, again)
    assert again[0].units[0].source == loaded[0].units[0].source


# ------------------------------------------------------------------------------------ validation


@pytest.fixture
def good_line(tmp_path: Path) -> dict[str, Any]:
    """One valid scenes sample written under tmp_path, as its JSON object."""
    write_jsonl([synthetic.make_sample("scenes", 0, 0)], tmp_path)
    return json.loads((tmp_path / "samples.jsonl").read_text(encoding="utf-8"))


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _corrupt_image(obj: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "images" / "corrupt.png").write_bytes(b"this is not a png at all" * 10)
    obj["units"][0]["source"] = "images/corrupt.png"


MUTATIONS: dict[str, tuple[Any, str, str]] = {
    # case: (mutate(obj, tmp_path), field named in the error, words of the problem)
    "missing image": (
        lambda o, _: o["units"][0].update(source="images/nope.png"),
        "units[0].source",
        "not found",
    ),
    "corrupt image": (_corrupt_image, "units[0].source", "unreadable"),
    "box outside unit": (
        lambda o, _: o["regions"][0].update(box=[200, 10, 300, 40]),
        "regions[0].box",
        "outside",
    ),
    "box negative": (lambda o, _: o["regions"][0].update(box=[-1, 10, 30, 40]), "regions[0].box", "outside"),
    "box x1 <= x0": (lambda o, _: o["regions"][0].update(box=[50, 10, 50, 40]), "regions[0].box", "x1 > x0"),
    "box y1 <= y0": (lambda o, _: o["regions"][0].update(box=[10, 50, 40, 20]), "regions[0].box", "y1 > y0"),
    "box of 3 numbers": (lambda o, _: o["regions"][0].update(box=[1, 2, 3]), "regions[0].box", "4 finite"),
    "region on missing unit": (
        lambda o, _: o["regions"][0].update(unit=3),
        "regions[0].unit",
        "does not exist",
    ),
    "distractor outside": (
        lambda o, _: o["distractors"][1].update(box=[0, 0, 10, 999]),
        "distractors[1].box",
        "outside",
    ),
    "no regions": (lambda o, _: o.update(regions=[]), "regions", "at least one region"),
    "empty question": (lambda o, _: o.update(question=""), "question", "empty question"),
    "blank question": (lambda o, _: o.update(question="   "), "question", "empty question"),
    "empty answer": (lambda o, _: o.update(answer=""), "answer", "empty answer"),
    "width disagrees": (lambda o, _: o["units"][0].update(width=300), "units[0].width", "says 300"),
    "height disagrees": (lambda o, _: o["units"][0].update(height=10), "units[0].height", "says 10"),
    "bad unit kind": (lambda o, _: o["units"][0].update(kind="video"), "units[0].kind", "video"),
    "page without number": (lambda o, _: o["units"][0].update(kind="page"), "units[0].page", "1-based"),
    "frame without timestamp": (
        lambda o, _: o["units"][0].update(kind="frame", frame=0),
        "units[0].timestamp",
        "timestamp",
    ),
    "no units": (lambda o, _: o.update(units=[]), "units", "at least one"),
    "no question": (lambda o, _: o.pop("question"), "question", "missing"),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_invalid_sample_error_names_id_and_field(case: str, good_line: dict[str, Any], tmp_path: Path) -> None:
    mutate, field, problem = MUTATIONS[case]
    mutate(good_line, tmp_path)
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(good_line)])
    with pytest.raises(SampleError) as info:
        load_dataset(str(path))
    err = info.value
    message = str(err)
    sid = good_line["id"]
    assert err.sample_id == sid
    assert err.field == field
    assert sid in message
    assert field in message
    assert problem in message
    assert "bad.jsonl:1" in message  # where: the file and line
    assert isinstance(err, ValueError)  # SampleError stays catchable as a ValueError


def test_good_line_fixture_is_valid(good_line: dict[str, Any], tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "good.jsonl", [json.dumps(good_line)])
    (sample,) = load_dataset(str(path))
    assert sample.id == good_line["id"]


def test_missing_id_is_reported(good_line: dict[str, Any], tmp_path: Path) -> None:
    del good_line["id"]
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(good_line)])
    with pytest.raises(SampleError) as info:
        load_dataset(str(path))
    assert info.value.field == "id"
    assert "'id'" in str(info.value)


def test_non_json_line_names_file_and_line(good_line: dict[str, Any], tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "broken.jsonl", [json.dumps(good_line), "", "{not json"])
    with pytest.raises(SampleError) as info:
        load_dataset(str(path))
    message = str(info.value)
    assert "broken.jsonl:3" in message  # blank lines still count
    assert "invalid JSON" in message


def test_json_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "list.jsonl", ["[1, 2, 3]"])
    with pytest.raises(SampleError, match=r"list\.jsonl:1.*expected a JSON object"):
        load_dataset(str(path))


def test_require_answer_false_accepts_empty_answer(good_line: dict[str, Any], tmp_path: Path) -> None:
    good_line["answer"] = ""
    path = _write_lines(tmp_path / "unlabelled.jsonl", [json.dumps(good_line)])
    (sample,) = load_dataset(str(path), require_answer=False)
    assert sample.answer == ""


def test_skip_invalid_keeps_good_lines_and_reports_bad_ones(good_line: dict[str, Any], tmp_path: Path) -> None:
    second = dict(good_line, id="second")
    bad_box = json.loads(json.dumps(good_line))
    bad_box["id"] = "bad-box"
    bad_box["regions"][0]["box"] = [0, 0, 999, 10]
    lines = [json.dumps(good_line), json.dumps(bad_box), json.dumps(second), "not json"]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)

    with pytest.raises(SampleError, match="bad-box"):
        load_dataset(str(path))

    report = LoadReport()
    samples = load_dataset(str(path), skip_invalid=True, report=report)
    assert [s.id for s in samples] == [good_line["id"], "second"]
    assert len(report.skipped) == 2
    assert "mixed.jsonl:2" in report.skipped[0] and "bad-box" in report.skipped[0]
    assert "regions[0].box" in report.skipped[0]
    assert "mixed.jsonl:4" in report.skipped[1] and "invalid JSON" in report.skipped[1]
    # Without a report the bad lines are still skipped.
    assert len(list(read_jsonl(path, skip_invalid=True))) == 2


# In-memory validation of Sample objects (what every source goes through).


def _replace_unit(sample: Sample, **changes: Any) -> Sample:
    return dataclasses.replace(sample, units=[dataclasses.replace(sample.units[0], **changes), *sample.units[1:]])


IN_MEMORY: dict[str, tuple[Any, str]] = {
    "empty id": (lambda s: dataclasses.replace(s, id=" "), "id"),
    "zero width": (lambda s: _replace_unit(s, width=0), "units[0].width/height"),
    "page 0": (lambda s: _replace_unit(s, page=0), "units[0].page"),
    "nan box": (
        lambda s: dataclasses.replace(s, regions=[Region(0, (1.0, 2.0, math.nan, 9.0))]),
        "regions[0].box",
    ),
    "negative unit": (lambda s: dataclasses.replace(s, regions=[Region(-1, None)]), "regions[0].unit"),
}


@pytest.mark.parametrize("case", list(IN_MEMORY))
def test_validate_in_memory(case: str) -> None:
    sample = synthetic.make_sample("pages", 0, 1)
    validate(sample)
    broken, field = IN_MEMORY[case]
    with pytest.raises(SampleError) as info:
        validate(broken(sample))
    assert info.value.field == field
    assert field in str(info.value)


def test_whole_unit_region_is_valid() -> None:
    sample = synthetic.make_sample("scenes", 0, 0)
    validate(dataclasses.replace(sample, regions=[Region(0, None)]))


@pytest.mark.parametrize("case", ["region is a list", "width is text"])
def test_malformed_values_are_sample_errors(case: str, good_line: dict[str, Any], tmp_path: Path) -> None:
    if case == "region is a list":
        good_line["regions"] = [[0, [1, 2, 3, 4]]]
    else:
        good_line["units"][0]["width"] = "wide"
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(good_line)])
    report = LoadReport()
    assert load_dataset(str(path), skip_invalid=True, report=report) == []
    assert len(report.skipped) == 1


def test_null_id_is_missing(good_line: dict[str, Any], tmp_path: Path) -> None:
    good_line["id"] = None
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(good_line)])
    with pytest.raises(SampleError) as info:
        load_dataset(str(path))
    assert info.value.field == "id"

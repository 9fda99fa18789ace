"""The RefCOCOg (umd) loader on a tiny release written here in the official format: refs(umd).p, COCO
instances.json and train2014 JPEGs. Expected boxes are computed by hand from the fixture's numbers."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import by_id, invoke
from PIL import Image

import corehead
from corehead.data import LoadReport, SampleError, load_dataset
from corehead.data.refcocog import read_refs
from corehead.metrics.tasks import score_answer

SIZES = {101: (80, 60), 102: (64, 48), 103: (50, 40)}  # image_id -> (width, height)
VAL = ["refcocog-1-11", "refcocog-1-12", "refcocog-2-21", "refcocog-5-51"]  # file order


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A rectangle as a COCO polygon (x, y pairs, clockwise)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def annotation(
    ann_id: int, image_id: int, category_id: int, bbox: list[float], polygons: list[list[float]]
) -> dict[str, Any]:
    """A COCO instance annotation, as instances.json stores it."""
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "segmentation": polygons,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
    }


def ref(
    ref_id: int, ann_id: int, image_id: int, category_id: int, split: str, sentences: list[tuple[int, str]]
) -> dict[str, Any]:
    """A ref with the real release's fields and types."""
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "split": split,
        "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # names no file: the loader ignores it
        "sent_ids": [sent_id for sent_id, _ in sentences],
        "sentences": [
            {"sent_id": sent_id, "sent": sent, "raw": sent.capitalize() + ".", "tokens": sent.split()}
            for sent_id, sent in sentences
        ],
    }


REFS = [
    ref(1, 1001, 101, 1, "val", [(11, "the man on the left"), (12, "a person in a red shirt")]),
    ref(2, 2001, 102, 18, "val", [(21, "a brown dog")]),
    ref(3, 2002, 102, 1, "train", [(31, "the whole picture")]),
    ref(4, 3001, 103, 1, "test", [(41, "a tiny person"), (42, "person at the top")]),
    ref(5, 1002, 101, 18, "val", [(51, "the dog next to the man")]),
]


def instances() -> dict[str, Any]:
    crowd = annotation(1003, 101, 62, [0, 0, 5, 5], [])
    crowd.update(iscrowd=1, segmentation={"counts": [0, 25, 4775], "size": [60, 80]})
    annotations = [
        annotation(1001, 101, 1, [10, 10, 20, 10], [rect(10, 10, 30, 20)]),
        annotation(1002, 101, 18, [40.4, 5.25, 10, 15], [rect(40, 5, 50, 20)]),
        crowd,
        annotation(1004, 101, 62, [70, 50, 0, 4], [rect(70, 50, 71, 54)]),  # empty bbox (w = 0)
        annotation(1005, 101, 62, [70, 50, 20, 5], [rect(70, 50, 90, 55)]),  # bbox leaves the 80 px wide image
        # a loose bbox around a two-part mask: the mask's tight box is (10, 5, 50, 20)
        annotation(2001, 102, 18, [2, 4, 50, 30], [rect(10, 10, 30, 20), rect(40, 5, 50, 15)]),
        annotation(2002, 102, 1, [0, 0, 64, 48], [rect(0, 0, 64, 48)]),
        annotation(3001, 103, 1, [1, 2, 3, 4], [rect(1, 2, 4, 6)]),
    ]
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "width": w, "height": h} for i, (w, h) in SIZES.items()
    ]
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_release(root: Path, refs: list[dict[str, Any]] = REFS, coco: dict[str, Any] | None = None) -> Path:
    """A RefCOCOg release as it unpacks: ROOT/refcocog/{refs(umd).p, instances.json}, ROOT/train2014/*.jpg."""
    (root / "refcocog").mkdir(parents=True, exist_ok=True)
    (root / "train2014").mkdir(exist_ok=True)
    (root / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "refcocog" / "instances.json").write_text(json.dumps(coco or instances()), encoding="utf-8")
    for image_id, size in SIZES.items():
        Image.new("RGB", size, (image_id, 90, 30)).save(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_release(tmp_path / "refcoco")


def test_one_sample_per_sentence_with_boxes_from_coco_bboxes(root: Path) -> None:
    samples = by_id(load_dataset(f"refcocog:{root}?split=val"))
    assert sorted(samples) == VAL
    first = samples["refcocog-1-11"]
    unit = first.units[0]
    assert (unit.kind, unit.width, unit.height) == ("image", 80, 60)
    assert unit.source == str((root / "train2014" / "COCO_train2014_000000000101.jpg").resolve())
    assert first.question == 'Locate "the man on the left" in the image and give its bounding box.'
    assert first.regions == [corehead.Region(0, (10.0, 10.0, 30.0, 20.0))]  # [10, 10, 20, 10] as x, y, w, h
    assert first.answer == "[10, 10, 30, 20]"
    assert first.meta == {"domain": "refcocog", "task": "grounding", "ref_id": 1, "ann_id": 1001, "category": "person"}
    # distractors: the image's other annotations but the crowd (1003), the empty (1004) and the outside (1005) one
    # each its own object, named by its annotation id
    assert first.distractors == [corehead.Region(0, (40.4, 5.25, 50.4, 20.25), object="1002")]
    other = samples["refcocog-1-12"]  # the same ref's second sentence: same box, its own question
    assert other.question == 'Locate "a person in a red shirt" in the image and give its bounding box.'
    assert other.regions == first.regions and other.answer == first.answer
    dog = samples["refcocog-5-51"]
    assert dog.regions[0].box == pytest.approx((40.4, 5.25, 50.4, 20.25))
    assert dog.answer == "[40, 5, 50, 20]"
    assert dog.meta["category"] == "dog" and dog.distractors == [corehead.Region(0, (10.0, 10.0, 30.0, 20.0), "1001")]
    second = samples["refcocog-2-21"]
    assert (second.units[0].width, second.units[0].height) == (64, 48)
    assert second.regions[0].box == (2.0, 4.0, 52.0, 34.0) and second.answer == "[2, 4, 52, 34]"
    assert second.distractors == [corehead.Region(0, (0.0, 0.0, 64.0, 48.0), "2002")]  # a box on the edges is inside
    assert second.units[0].load().size == (64, 48)


def test_splits_filter_refs_and_val_is_the_default(root: Path) -> None:
    assert sorted(by_id(load_dataset(f"refcocog:{root}?split=train"))) == ["refcocog-3-31"]
    assert sorted(by_id(load_dataset(f"refcocog:{root}?split=test"))) == ["refcocog-4-41", "refcocog-4-42"]
    assert sorted(by_id(load_dataset(f"refcocog:{root}"))) == VAL
    assert by_id(load_dataset(f"refcocog:{root}?split=test"))["refcocog-4-42"].regions[0].box == (1.0, 2.0, 4.0, 6.0)


def test_seeded_order_and_limit(root: Path) -> None:
    spec = f"refcocog:{root}?split=val"
    orders = set()
    for seed in range(6):
        ids = [s.id for s in load_dataset(spec, seed=seed)]
        assert ids == [VAL[i] for i in np.random.default_rng(seed).permutation(4)]
        assert [s.id for s in load_dataset(spec, n=2, seed=seed)] == ids[:2]
        orders.add(tuple(ids))
    assert len(orders) > 1
    assert [s.id for s in load_dataset(spec, seed=3)] == [s.id for s in load_dataset(spec, seed=3)]


def test_mask_option_uses_the_tight_box_of_the_segmentation(root: Path) -> None:
    dog = by_id(load_dataset(f"refcocog:{root}?split=val&box=mask"))["refcocog-2-21"]
    # the union of the polygons (10, 10)-(30, 20) and (40, 5)-(50, 15), not the loose bbox (2, 4)-(52, 34)
    assert dog.regions == [corehead.Region(0, (10.0, 5.0, 50.0, 20.0))]
    assert dog.answer == "[10, 5, 50, 20]"
    assert dog.distractors == [corehead.Region(0, (0.0, 0.0, 64.0, 48.0), "2002")]
    man = by_id(load_dataset(f"refcocog:{root}?box=mask"))["refcocog-1-11"]
    assert man.regions[0].box == (10.0, 10.0, 30.0, 20.0)


def test_python2_byte_strings_are_read_as_utf8_or_latin1(tmp_path: Path) -> None:
    """refs(umd).p comes from Python 2's pickle, whose str values are 8-bit strings (opcode U), not unicode."""

    def py2(value: Any) -> bytes:
        if isinstance(value, bytes):
            return b"U" + bytes([len(value)]) + value
        if isinstance(value, int):
            return b"J" + struct.pack("<i", value)
        if isinstance(value, list):
            return b"](" + b"".join(py2(v) for v in value) + b"e"
        return b"}(" + b"".join(py2(k) + py2(v) for k, v in value.items()) + b"u"

    for text, name in ((b"caf\xc3\xa9 chair", "utf8.p"), (b"caf\xe9 chair", "latin1.p")):
        path = tmp_path / name
        path.write_bytes(b"\x80\x02" + py2([{b"ref_id": 7, b"sentences": [{b"sent_id": 70, b"sent": text}]}]) + b".")
        assert read_refs(path) == [{"ref_id": 7, "sentences": [{"sent_id": 70, "sent": "café chair"}]}]


class Exploit:
    """Unpickling this runs a shell command (pickle's REDUCE on os.system): the loader must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"echo pwned > {self.marker}",))


def test_a_pickle_that_names_any_global_is_refused_without_running_it(tmp_path: Path) -> None:
    root = write_release(tmp_path / "refcoco")
    marker = tmp_path / "pwned"
    refs = root / "refcocog" / "refs(umd).p"
    refs.write_bytes(pickle.dumps([REFS[0], Exploit(marker)], protocol=2))
    with pytest.raises(ValueError, match=r"refuses to load posix\.system.*only plain containers and scalars") as err:
        load_dataset(f"refcocog:{root}")
    assert str(refs) in str(err.value)
    assert not marker.exists()
    refs.write_bytes(pickle.dumps({"not": "a list"}, protocol=2))
    with pytest.raises(ValueError, match=r"refs\(umd\)\.p: expected a list of refs"):
        load_dataset(f"refcocog:{root}")
    refs.write_bytes(pickle.dumps(REFS, protocol=2)[:40])
    with pytest.raises(ValueError, match=r"refs\(umd\)\.p: not a readable refs pickle"):
        load_dataset(f"refcocog:{root}")


def test_missing_image_names_the_sample_and_field(root: Path) -> None:
    (root / "train2014" / "COCO_train2014_000000000102.jpg").unlink()
    with pytest.raises(SampleError) as err:
        load_dataset(f"refcocog:{root}")
    assert (err.value.sample_id, err.value.field) == ("refcocog-2-21", "units[0].source")
    assert "COCO_train2014_000000000102.jpg" in str(err.value) and "train2014" in str(err.value)


def test_box_out_of_bounds_is_an_error_not_clipped(tmp_path: Path) -> None:
    coco = instances()
    coco["annotations"][0]["bbox"] = [70, 10, 20, 10]  # x1 = 90 on an 80 px wide image
    root = write_release(tmp_path / "refcoco", coco=coco)
    with pytest.raises(SampleError, match=r"instances\.json: sample 'refcocog-1-1[12]'.*outside unit 0 \(80x60") as err:
        load_dataset(f"refcocog:{root}")
    assert err.value.field == "regions[0].box"


def test_missing_fields_and_malformed_files_are_named(tmp_path: Path) -> None:
    broken = [dict(REFS[1]), *REFS[2:]]
    del broken[0]["ann_id"]
    root = write_release(tmp_path / "refcoco", refs=broken)
    with pytest.raises(SampleError, match=r"refs\(umd\)\.p: sample 'refcocog-2-21': field 'ann_id': missing"):
        load_dataset(f"refcocog:{root}")
    (root / "refcocog" / "instances.json").write_text('{"images": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"instances\.json: malformed JSON"):
        load_dataset(f"refcocog:{root}")
    (root / "refcocog" / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances\.json.*ROOT/refcocog/refs\(umd\)\.p"):
        load_dataset(f"refcocog:{root}")


def test_options_are_checked(root: Path) -> None:
    with pytest.raises(ValueError, match=r"does not take option\(s\) crop; it takes split: .*; box: ") as err:
        load_dataset(f"refcocog:{root}?split=val&crop=1")
    assert "train, val or test" in str(err.value)
    with pytest.raises(ValueError, match=r"split='testA': choose from train, val, test"):
        load_dataset(f"refcocog:{root}?split=testA")
    with pytest.raises(ValueError, match=r"box='polygon': choose from bbox, mask"):
        load_dataset(f"refcocog:{root}?box=polygon")


def test_skip_invalid_keeps_the_good_samples_and_reports_the_rest(tmp_path: Path) -> None:
    coco = instances()
    coco["annotations"][0]["bbox"] = [70, 10, 20, 10]
    root = write_release(tmp_path / "refcoco", coco=coco)
    (root / "train2014" / "COCO_train2014_000000000102.jpg").unlink()
    report = LoadReport()
    samples = load_dataset(f"refcocog:{root}", skip_invalid=True, report=report)
    assert [s.id for s in samples] == ["refcocog-5-51"]
    assert samples[0].distractors == []  # 1001's box now leaves the image: no longer a distractor
    assert len(report.skipped) == 3
    reasons = " | ".join(report.skipped)
    for sid in ("refcocog-1-11", "refcocog-1-12"):
        assert f"sample '{sid}': field 'regions[0].box'" in reasons
    assert "sample 'refcocog-2-21': field 'units[0].source': missing file" in reasons


def test_data_show_prints_jsonl(root: Path) -> None:
    result = invoke("--quiet", "data", "show", f"refcocog:{root}", "--limit", "2")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == [VAL[i] for i in np.random.default_rng(0).permutation(4)[:2]]
    for row in rows:
        sample = by_id(load_dataset(f"refcocog:{root}"))[row["id"]]
        unit = sample.units[0]
        assert row["units"] == [{"kind": "image", "source": unit.source, "width": unit.width, "height": unit.height}]
        assert row["regions"] == [{"unit": 0, "box": list(sample.regions[0].box or ())}]
        assert row["meta"]["task"] == "grounding"


def test_grounding_answers_score_by_iou_in_the_models_convention(root: Path) -> None:
    adapter = corehead.load_model("builtin")  # Qwen3-VL family: boxes in thousandths of the image
    man = by_id(load_dataset(f"refcocog:{root}"))["refcocog-1-11"]  # (10, 10)-(30, 20) on 80 x 60
    parse = adapter.parse_boxes
    assert score_answer(man, "[125, 167, 375, 333]", parse) == 1.0  # the gold box itself
    assert score_answer(man, 'the man: {"bbox_2d": [188, 167, 438, 333]}', parse) == 1.0  # 5 px right: IoU 0.6
    assert score_answer(man, "[213, 167, 463, 333]", parse) == 0.0  # 7 px right: IoU 0.48
    assert score_answer(man, "[0, 667, 125, 833]", parse) == 0.0  # far away
    assert score_answer(man, "the man on the left", parse) == 0.0  # no box


def test_score_and_ablate_end_to_end_with_the_builtin_model(root: Path, tmp_path: Path) -> None:
    common = ["--model", "builtin", "--data", f"refcocog:{root}?split=val", "--limit", "2"]
    invoke("--quiet", "score", *common, "--out", str(tmp_path / "run"), "--json")
    heads = json.loads((tmp_path / "run" / "heads.json").read_text())
    assert (heads["dataset"], heads["n_samples"]) == (f"refcocog:{root}?split=val", 2)
    assert len(heads["selected"]) >= 1
    assert heads["scored"]["n"] == 2 and heads["regions"] == 2 and heads["fallback_rate"] is not None
    # held out by construction: all 4 val samples, less the 2 scored ones
    args = ["--heads", str(tmp_path / "run"), "--k", "1", "--seeds", "1", "--out", str(tmp_path / "ab"), "--json"]
    done = invoke("--quiet", "ablate", *common[:-1], "4", *args)
    table = {(r["condition"], r["k"]): r for r in json.loads(done.stdout)["conditions"]}
    assert {("none", 0), ("top", 1), ("bottom", 1), ("random", 1), ("random-layer-matched", 1)} <= set(table)
    assert json.loads(done.stdout)["held_out"]["excluded"] == 2
    assert all(r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 for r in table.values())
    assert (tmp_path / "ab" / "ablation.json").exists()

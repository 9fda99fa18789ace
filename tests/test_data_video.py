"""The public video loaders (VidSTG, MLVU) on tiny copies of their real layouts, with mp4s written here by PyAV.

Each frame of a test video is a solid colour that encodes its index, so a decoded frame tells which one it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from helpers import by_id, invoke, runner

from corehead.cli import app
from corehead.data import LoadReport, SampleError, load_dataset
from corehead.data.mlvu import load as load_mlvu
from corehead.data.sample import VisualUnit
from corehead.data.video import Sampling, frame_indices
from corehead.metrics.tasks import choice_match, score_answer

WIDTH, HEIGHT = 64, 48


def colour(index: int) -> tuple[int, int, int]:
    """The solid colour of frame `index` (up to 256 frames): low and high nibble in red and green."""
    return (index % 16) * 16 + 8, (index // 16) * 16 + 8, 128


def shown_index(unit: VisualUnit) -> int:
    """The frame index a decoded unit's pixels encode (centre pixel; the codec is lossy by a few levels)."""
    assert unit.image is not None
    red, green, _ = unit.image.convert("RGB").getpixel((unit.width // 2, unit.height // 2))
    return int(red) // 16 + 16 * (int(green) // 16)


def write_video(path: Path, count: int, fps: int) -> Path:
    """An mpeg4 mp4 of `count` solid-colour frames at `fps`, 64x48 px."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(count):
            pixels = np.full((HEIGHT, WIDTH, 3), colour(i), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- VidSTG

ADULT_MISSING = 8  # the frame on which VidOR has no box for the adult (tid 0)


def adult_box(frame: int) -> list[int]:
    return [frame, 10, frame + 20, 30]


def trajectories(count: int) -> list[list[dict[str, Any]]]:
    """VidOR boxes: the adult (tid 0) moves right, the dog (tid 1) stands on the right edge."""

    def box(tid: int, xyxy: list[int]) -> dict[str, Any]:
        keys = ("xmin", "ymin", "xmax", "ymax")
        return {"tid": tid, "bbox": dict(zip(keys, xyxy, strict=True)), "generated": 0, "tracker": "none"}

    return [([] if f == ADULT_MISSING else [box(0, adult_box(f))]) + [box(1, [40, 4, WIDTH, 44])] for f in range(count)]


def vidstg_item(vid: str, segment: tuple[int, int], gt: tuple[int, int], count: int = 20) -> dict[str, Any]:
    return {
        "vid": vid,
        "frame_count": count,
        "fps": 10.0,
        "width": WIDTH,
        "height": HEIGHT,
        "subject/objects": [{"tid": 0, "category": "adult"}, {"tid": 1, "category": "dog"}],
        "used_segment": {"begin_fid": segment[0], "end_fid": segment[1]},
        "used_relation": {"subject_tid": 0, "object_tid": 1, "predicate": "next_to", "begin_fid": 0, "end_fid": 20},
        "temporal_gt": {"begin_fid": gt[0], "end_fid": gt[1]},
        "captions": [{"description": "an adult is next to a dog.", "type": "subject", "target_id": 0}],
        "questions": [
            {"description": "who is next to the dog?", "type": "subject", "target_id": 0},
            {"description": "what is next to the adult?", "type": "object", "target_id": 1},
        ],
    }


def add_vidor_video(root: Path, vid: str, folder: str, count: int = 20) -> None:
    """A VidOR validation video and its per-video annotation, in VidOR's layout."""
    write_video(root / "vidor" / "video" / folder / f"{vid}.mp4", count, fps=10)
    write_json(
        root / "vidor" / "annotation" / "validation" / folder / f"{vid}.json",
        {
            "video_id": vid,
            "video_path": f"{folder}/{vid}.mp4",
            "frame_count": count,
            "fps": 10,
            "width": WIDTH,
            "height": HEIGHT,
            "subject/objects": [{"tid": 0, "category": "adult"}, {"tid": 1, "category": "dog"}],
            "trajectories": trajectories(count),
            "relation_instances": [],
        },
    )


@pytest.fixture
def vidstg(tmp_path: Path) -> Path:
    """VidSTG test split: video 1111 (20 frames at 10 fps) with two items; the second's GT ends at the
    video's end (end_fid == frame_count) and its used segment names the frame after the last."""
    root = tmp_path / "vidstg"
    add_vidor_video(root, "1111", "0001")
    write_json(
        root / "annotations" / "test_annotations.json",
        [vidstg_item("1111", (2, 15), (6, 10)), vidstg_item("1111", (0, 20), (14, 20))],
    )
    return root


def annotation_file(root: Path) -> Path:
    return root / "annotations" / "test_annotations.json"


def test_frame_indices_rate_and_cap() -> None:
    assert frame_indices(2, 15, 10.0, Sampling(fps=5)) == [2, 4, 6, 8, 10, 12, 14]
    assert frame_indices(0, 99, 29.97, Sampling(fps=1, max_frames=99)) == [0, 30, 60, 90]
    assert frame_indices(0, 4, 10.0, Sampling(fps=50)) == [0, 1, 2, 3, 4]  # never more than every frame
    assert frame_indices(2, 15, 10.0, Sampling(fps=10, max_frames=4)) == [2, 6, 11, 15]


def test_vidstg_frames_regions_and_distractors(vidstg: Path) -> None:
    samples = by_id(load_dataset(f"vidstg:{vidstg}?split=test&fps=5"))
    assert sorted(samples) == ["vidstg-1111-q0", "vidstg-1111-q1", "vidstg-1111-q2", "vidstg-1111-q3"]
    first = samples["vidstg-1111-q0"]
    assert [u.frame for u in first.units] == [2, 4, 6, 8, 10, 12, 14]
    assert [u.timestamp for u in first.units] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])
    assert all(u.kind == "frame" and (u.width, u.height) == (WIDTH, HEIGHT) for u in first.units)
    assert [shown_index(u) for u in first.units] == [u.frame for u in first.units]
    # GT [6, 10): frames 6 and 8 are inside, 10 is not; the adult has no box on frame 8
    assert [(r.unit, r.box) for r in first.regions] == [(2, tuple(map(float, adult_box(6))))]
    assert [(r.unit, r.box, r.object) for r in first.distractors] == [(2, (40.0, 4.0, 64.0, 44.0), "1")]  # the dog
    assert first.question == "who is next to the dog?"
    assert first.answer == "adult"
    assert first.meta == {
        "domain": "vidstg",
        "task": "exact",
        "query": "question",
        "vid": "1111",
        "target_id": 0,
        "temporal_gt": [6, 10],
    }
    dog = samples["vidstg-1111-q1"]
    assert dog.answer == "dog"
    assert [r.unit for r in dog.regions] == [2, 3]  # the dog has a box on both GT frames
    assert [(r.unit, r.object) for r in dog.distractors] == [(2, "0")]  # the adult (tid 0) only on frame 6


def test_vidstg_gt_ending_at_the_last_frame(vidstg: Path) -> None:
    sample = by_id(load_dataset(f"vidstg:{vidstg}?fps=5"))["vidstg-1111-q2"]
    assert [u.frame for u in sample.units] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]  # segment end 20 is past the video
    frames = [sample.units[r.unit].frame for r in sample.regions]
    assert frames == [14, 16, 18]  # [14, 20): end exclusive, equal to frame_count
    assert sample.meta["temporal_gt"] == [14, 20]


def test_vidstg_max_side_and_max_frames(vidstg: Path) -> None:
    sample = by_id(load_dataset(f"vidstg:{vidstg}?fps=10&max_frames=4&max_side=32"))["vidstg-1111-q1"]
    assert [u.frame for u in sample.units] == [2, 6, 11, 15]
    assert [shown_index(u) for u in sample.units] == [2, 6, 11, 15]
    assert all(
        (u.width, u.height) == (32, 24) and u.image is not None and u.image.size == (32, 24) for u in sample.units
    )
    # only frame 6 is sampled inside [6, 10); the dog's box on the right edge stays exactly on it
    assert [(r.unit, r.box) for r in sample.regions] == [(1, (20.0, 2.0, 32.0, 22.0))]
    assert [(r.unit, r.box) for r in sample.distractors] == [(1, (3.0, 5.0, 13.0, 15.0))]


def test_vidstg_captions_and_seeded_order(vidstg: Path) -> None:
    spec = f"vidstg:{vidstg}?captions=1&fps=5"
    everything = load_dataset(spec, seed=3)
    file_order = ["q0", "q1", "c0", "q2", "q3", "c1"]
    expected = [f"vidstg-1111-{file_order[i]}" for i in np.random.default_rng(3).permutation(6)]
    assert [s.id for s in everything] == expected
    assert [s.id for s in load_dataset(spec, n=2, seed=3)] == expected[:2]
    assert [s.id for s in load_dataset(spec, n=2, seed=4)] != expected[:2]
    caption = by_id(everything)["vidstg-1111-c0"]
    assert caption.question == "Locate: an adult is next to a dog."
    assert caption.answer == "adult" and caption.meta["query"] == "caption"
    assert [r.unit for r in caption.regions] == [2]


def first_error(spec: str) -> SampleError:
    with pytest.raises(SampleError) as caught:
        load_dataset(spec)
    return caught.value


def test_vidstg_corrupt_and_missing_video(vidstg: Path) -> None:
    video = vidstg / "vidor" / "video" / "0001" / "1111.mp4"
    video.write_bytes(np.random.default_rng(0).bytes(4096))
    error = first_error(f"vidstg:{vidstg}")
    assert error.sample_id.startswith("vidstg-1111-") and error.field == "video"
    assert "unreadable video" in str(error) and str(video) in str(error)
    video.unlink()
    error = first_error(f"vidstg:{vidstg}")
    assert error.field == "video_path" and "missing file" in str(error) and "1111.json" in str(error)


def test_vidstg_box_outside_frame(vidstg: Path) -> None:
    path = vidstg / "vidor" / "annotation" / "validation" / "0001" / "1111.json"
    vidor = read_json(path)
    vidor["trajectories"][6][1]["bbox"]["xmax"] = WIDTH + 5
    write_json(path, vidor)
    error = first_error(f"vidstg:{vidstg}?fps=5")
    assert error.field == "trajectories[6].bbox" and "outside the 64x48 frame" in str(error)
    assert str(path) in str(error) and error.sample_id.startswith("vidstg-1111-")


def test_vidstg_temporal_gt_outside_video(vidstg: Path) -> None:
    items = read_json(annotation_file(vidstg))
    items[0]["temporal_gt"]["end_fid"] = 21
    write_json(annotation_file(vidstg), items[:1])
    error = first_error(f"vidstg:{vidstg}")
    assert error.field == "temporal_gt" and "not within the 20 frames" in str(error)
    assert "test_annotations.json" in str(error)


def test_vidstg_malformed_json(vidstg: Path) -> None:
    vidor = vidstg / "vidor" / "annotation" / "validation" / "0001" / "1111.json"
    vidor.write_text(vidor.read_text()[:50], encoding="utf-8")
    error = first_error(f"vidstg:{vidstg}")
    assert error.sample_id.startswith("vidstg-1111-") and error.field == "vidor annotation"
    assert "invalid JSON" in str(error) and str(vidor) in str(error)
    annotation_file(vidstg).write_text("[{", encoding="utf-8")
    error = first_error(f"vidstg:{vidstg}")
    assert error.field == "annotations" and "test_annotations.json" in str(error)


def test_vidstg_no_sampled_frame_in_gt(vidstg: Path) -> None:
    """At 1 fps the segment [2, 15] gives frames 2 and 12: none lies in the GT [6, 10)."""
    write_json(annotation_file(vidstg), read_json(annotation_file(vidstg))[:1])
    error = first_error(f"vidstg:{vidstg}?fps=1")
    assert error.field == "temporal_gt" and "no frame sampled at 1.0 fps lies in [6, 10)" in str(error)


def test_vidstg_bad_options(vidstg: Path) -> None:
    with pytest.raises(ValueError, match=r"does not take option\(s\) colour; it takes split"):
        load_dataset(f"vidstg:{vidstg}?colour=red")
    with pytest.raises(ValueError, match="fps must be a positive float"):
        load_dataset(f"vidstg:{vidstg}?fps=0")
    with pytest.raises(ValueError, match="split must be one of train, val, test"):
        load_dataset(f"vidstg:{vidstg}?split=dev")


def test_vidstg_skip_invalid_keeps_the_good_ones(vidstg: Path) -> None:
    add_vidor_video(vidstg, "2222", "0002")
    (vidstg / "vidor" / "video" / "0002" / "2222.mp4").write_bytes(b"not a video")
    items = read_json(annotation_file(vidstg))
    write_json(annotation_file(vidstg), [items[0], vidstg_item("2222", (0, 19), (0, 20))])
    report = LoadReport()
    samples = load_dataset(f"vidstg:{vidstg}?fps=5", skip_invalid=True, report=report)
    assert sorted(s.id for s in samples) == ["vidstg-1111-q0", "vidstg-1111-q1"]
    assert len(report.skipped) == 2
    assert all("vidstg-2222-q" in why and "'video'" in why and "unreadable video" in why for why in report.skipped)


# ------------------------------------------------------------------------------------------------- MLVU


@pytest.fixture
def mlvu(tmp_path: Path) -> Path:
    """MLVU dev: plotQA (2 items), needle (one item open-ended), count (videos under video/count/), summary."""
    root = tmp_path / "MLVU"
    write_video(root / "video" / "1_plotQA" / "movie.mp4", 60, fps=5)
    write_video(root / "video" / "2_needle" / "needle.mp4", 10, fps=5)
    write_video(root / "video" / "count" / "count.mp4", 10, fps=5)

    def item(video: str, question: str, candidates: list[Any] | None, answer: Any, kind: str) -> dict[str, Any]:
        out = {"video": video, "duration": 12, "question": question, "answer": answer, "question_type": kind}
        return out if candidates is None else {**out, "candidates": candidates}

    colours = ["red", "blue", "green", "yellow"]
    write_json(
        root / "json" / "1_plotQA.json",
        [
            item("movie.mp4", "What colour is the car?", colours, "blue", "plotQA"),
            item("movie.mp4", "What colour is the sky?", colours, "yellow", "plotQA"),
        ],
    )
    write_json(
        root / "json" / "2_needle.json",
        [
            item("needle.mp4", "What is hidden?", ["a key", "a cat"], "a cat", "needle"),
            item("needle.mp4", "Describe the hidden thing.", None, "a small cat", "needle"),
        ],
    )
    write_json(root / "json" / "4_count.json", [item("count.mp4", "How many cats?", [1, 2, 3], 2, "count")])
    write_json(
        root / "json" / "9_summary.json", [item("needle.mp4", "Summarize the video.", None, "A cat.", "summary")]
    )
    return root


def test_mlvu_questions_candidates_and_frames(mlvu: Path) -> None:
    samples = by_id(load_dataset(f"mlvu:{mlvu}?fps=1"))
    assert sorted(samples) == ["mlvu-count-0", "mlvu-needle-0", "mlvu-plotQA-0", "mlvu-plotQA-1"]
    car = samples["mlvu-plotQA-0"]
    assert car.question == (
        "What colour is the car?\n(A) red\n(B) blue\n(C) green\n(D) yellow\nAnswer with the option's letter."
    )
    assert car.answer == "blue" and car.regions == []
    assert car.meta == {
        "domain": "mlvu",
        "task": "choice",
        "candidates": ["red", "blue", "green", "yellow"],
        "question_type": "plotQA",
    }
    assert [u.frame for u in car.units] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]
    assert [u.timestamp for u in car.units] == pytest.approx(list(range(12)))
    assert [shown_index(u) for u in car.units] == [u.frame for u in car.units]
    count = samples["mlvu-count-0"]
    assert count.meta["candidates"] == ["1", "2", "3"] and count.answer == "2"
    assert [u.frame for u in count.units] == [0, 5]


def test_mlvu_seeks_over_long_gaps_and_caps_frames(mlvu: Path) -> None:
    car = by_id(load_dataset(f"mlvu:{mlvu}?tasks=plotQA&fps=0.1"))["mlvu-plotQA-0"]
    assert [(u.frame, shown_index(u)) for u in car.units] == [(0, 0), (50, 50)]  # a 10 s gap: seeks
    capped = by_id(load_dataset(f"mlvu:{mlvu}?tasks=plotQA&fps=5&max_frames=3&max_side=16"))["mlvu-plotQA-1"]
    assert [(u.frame, shown_index(u), u.width, u.height) for u in capped.units] == [
        (0, 0, 16, 12),
        (30, 30, 16, 12),
        (59, 59, 16, 12),
    ]


def test_mlvu_tasks_filter(mlvu: Path) -> None:
    assert sorted(s.id for s in load_dataset(f"mlvu:{mlvu}?tasks=count,needle")) == ["mlvu-count-0", "mlvu-needle-0"]
    with pytest.raises(ValueError, match="open-ended"):
        load_dataset(f"mlvu:{mlvu}?tasks=summary")
    with pytest.raises(ValueError, match="unknown task"):
        load_dataset(f"mlvu:{mlvu}?tasks=plot")
    with pytest.raises(FileNotFoundError, match="ego"):
        load_dataset(f"mlvu:{mlvu}?tasks=ego")
    with pytest.raises(ValueError, match=r"does not take option\(s\) split"):
        load_dataset(f"mlvu:{mlvu}?split=test")


def test_mlvu_seeded_order(mlvu: Path) -> None:
    spec = f"mlvu:{mlvu}?max_frames=2"
    file_order = ["mlvu-plotQA-0", "mlvu-plotQA-1", "mlvu-needle-0", "mlvu-needle-1", "mlvu-count-0"]
    order = [file_order[i] for i in np.random.default_rng(7).permutation(5) if file_order[i] != "mlvu-needle-1"]
    assert [s.id for s in load_dataset(spec, seed=7)] == order
    assert [s.id for s in load_dataset(spec, n=2, seed=7)] == order[:2]


def test_mlvu_choice_scoring(mlvu: Path) -> None:
    car = by_id(load_dataset(f"mlvu:{mlvu}?tasks=plotQA&max_frames=1"))["mlvu-plotQA-0"]
    candidates = car.meta["candidates"]
    for right in ("(B)", "B.", "b", "blue", "Blue."):
        assert choice_match(right, car.answer, candidates) and score_answer(car, right) == 1.0
    for wrong in ("(A)", "C", "green"):
        assert not choice_match(wrong, car.answer, candidates) and score_answer(car, wrong) == 0.0


def test_mlvu_bad_input(mlvu: Path) -> None:
    (mlvu / "video" / "count" / "count.mp4").unlink()
    error = first_error(f"mlvu:{mlvu}?tasks=count")
    assert (error.sample_id, error.field) == ("mlvu-count-0", "video") and "missing file" in str(error)
    plot = mlvu / "json" / "1_plotQA.json"
    items = read_json(plot)
    items[1]["answer"] = "C"
    write_json(plot, items)
    (mlvu / "video" / "2_needle" / "needle.mp4").write_bytes(np.random.default_rng(1).bytes(2048))
    (mlvu / "json" / "4_count.json").write_text('[{"video": ', encoding="utf-8")
    report = LoadReport()
    samples = load_dataset(f"mlvu:{mlvu}", skip_invalid=True, report=report)
    assert [s.id for s in samples] == ["mlvu-plotQA-0"]
    assert len(report.skipped) == 3
    skipped = " | ".join(report.skipped)
    assert "4_count.json" in skipped and "invalid JSON" in skipped
    # named by its place in the task file, its video and its question
    named = "json/1_plotQA.json[1]: sample 'mlvu-plotQA-1' (video 'movie.mp4', question 'What colour is the sky?')"
    assert f"{named}: field 'answer'" in skipped
    needle = "sample 'mlvu-needle-0' (video 'needle.mp4', question 'What is hidden?'): field 'video'"
    assert needle in skipped and "unreadable video" in skipped
    with pytest.raises(SampleError, match="invalid JSON"):
        list(load_mlvu(mlvu, {}))


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_data_show_vidstg(vidstg: Path) -> None:
    result = invoke("--quiet", "data", "show", f"vidstg:{vidstg}?fps=5", "--limit", "1")
    lines = result.output.splitlines()
    assert len(lines) == 1
    shown = json.loads(lines[0])
    assert shown["id"].startswith("vidstg-1111-q")
    assert all(u["kind"] == "frame" and isinstance(u["frame"], int) for u in shown["units"])
    assert [u["timestamp"] for u in shown["units"]] == pytest.approx([u["frame"] / 10 for u in shown["units"]])
    assert shown["regions"] and all(len(r["box"]) == 4 for r in shown["regions"])


def test_cli_score_and_ablate_vidstg_with_the_builtin_model(vidstg: Path, tmp_path: Path) -> None:
    spec = f"vidstg:{vidstg}?fps=3&max_frames=4"
    run = tmp_path / "run"
    scored = invoke(
        "--quiet", "score", "--model", "builtin", "--data", spec, "--limit", "2", "--out", str(run), "--json"
    )
    assert json.loads(scored.output)["n"] == 2 and (run / "heads.json").exists()
    assert json.loads((run / "heads.json").read_text())["scored"]["n"] == 2
    # held out by construction: the 4 questions, less the 2 scored ones
    args = ["--data", spec, "--limit", "4", "--heads", str(run), "--k", "1", "--seeds", "1"]
    ablated = invoke("--quiet", "ablate", "--model", "builtin", *args, "--out", str(tmp_path / "ab"), "--json")
    conditions = json.loads(ablated.output)["conditions"]
    assert {c["condition"] for c in conditions} == {"none", "top", "bottom", "random", "random-layer-matched"}
    assert all(c["n"] == 2 for c in conditions)


def test_cli_eval_mlvu_and_score_refuses_it(mlvu: Path, tmp_path: Path) -> None:
    spec = f"mlvu:{mlvu}?max_frames=4"
    result = invoke("--quiet", "eval", "--model", "builtin", "--data", spec, "--n", "2", "--json")
    summary = json.loads(result.output)
    assert summary["n"] == 2 and set(summary["by_domain"]) == {"mlvu"} and 0 <= summary["accuracy"] <= 1
    refused = runner.invoke(
        app, ["--quiet", "score", "--model", "builtin", "--data", spec, "--limit", "2", "--out", str(tmp_path / "r")]
    )
    assert refused.exit_code != 0
    assert isinstance(refused.exception, SampleError) and refused.exception.field == "regions"
    assert "eval it instead" in str(refused.exception)

"""VidSTG (spatio-temporal video grounding) as its release unpacks, beside the VidOR videos and boxes.

Layout under ROOT: `annotations/{split}_annotations.json` (VidSTG: one item per video relation, with its
questions and captions), `vidor/annotation/{training,validation}/XXXX/<vid>.json` (VidOR: the boxes of every
tracked object on every frame) and `vidor/video/XXXX/<vid>.mp4`. VidSTG's test split is VidOR's validation
set; train and val are VidOR training videos.

One sample per question (and per caption with `captions=1`): frames sampled over the item's used segment;
the evidence is the target object's box on each sampled frame inside the temporal ground truth
[begin_fid, end_fid) and the distractors are the other tracked objects' boxes on those frames. VidSTG
questions have no textual answer, so the answer is the target's category (e.g. "adult").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corehead.data import check_options
from corehead.data.public import field, inside, samples, seeded
from corehead.data.sample import Box, Region, Sample, SampleError, VisualUnit
from corehead.data.video import OPTIONS, Sampling, frames, read_json

VIDOR_PARTS: dict[str, str] = {"train": "training", "val": "training", "test": "validation"}
ALLOWED: dict[str, str] = {
    "split": "train, val or test (default test)",
    "captions": "1 to add one sample per caption, besides one per question (default 0)",
    **OPTIONS,
}
KINDS: dict[str, str] = {"questions": "q", "captions": "c"}


@dataclass(frozen=True)
class Query:
    """One question or caption of an annotation item, and the id of the sample it makes."""

    item: int
    kind: str  # "questions" or "captions"
    index: int
    sample_id: str


def load(
    root: Path, options: dict[str, str], seed: int = 0, skip: Callable[[SampleError], None] | None = None
) -> Iterator[Sample]:
    """VidSTG samples of one split, in a seeded order."""
    check_options("vidstg", options, ALLOWED)
    split = options.get("split", "test")
    if split not in VIDOR_PARTS:
        raise ValueError(f"vidstg: split must be one of {', '.join(VIDOR_PARTS)}, got {split!r}")
    captions = options.get("captions", "0")
    if captions not in ("0", "1"):
        raise ValueError(f"vidstg: option captions is 0 or 1, got {captions!r}")
    sampling = Sampling.parse("vidstg", options)
    path = root / "annotations" / f"{split}_annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"vidstg: no {path} (VidSTG's annotations, unpacked under ROOT/annotations)")
    boxes_dir = root / "vidor" / "annotation" / VIDOR_PARTS[split]
    if not boxes_dir.is_dir():
        raise FileNotFoundError(f"vidstg: no {boxes_dir} (the VidOR annotations, unpacked under ROOT/vidor)")
    items = read_json(path, "?", "annotations")
    if not isinstance(items, list):
        raise SampleError("?", "annotations", f"expected a list of items, got {type(items).__name__}", str(path))
    vidor = {p.stem: p for p in boxes_dir.glob("*/*.json")}
    kinds = list(KINDS) if captions == "1" else ["questions"]
    maker = _Maker(root, items, vidor, sampling, str(path))
    return samples(seeded(_queries(items, kinds), seed), maker.make, skip, where=str(path))


def _queries(items: list[Any], kinds: list[str]) -> list[Query]:
    """Every question (and caption) of every item; ids count them per video, across its items. An item
    whose list is missing or malformed still gets one query, so that making it reports the problem."""
    counts: dict[tuple[str, str], int] = {}
    queries = []
    for i, item in enumerate(items):
        vid = str(item.get("vid", f"item{i}")) if isinstance(item, dict) else f"item{i}"
        for kind in kinds:
            entries = item.get(kind) if isinstance(item, dict) else None
            for j in range(len(entries) if isinstance(entries, list) else 1):
                key = (vid, KINDS[kind])
                counts[key] = counts.get(key, -1) + 1
                queries.append(Query(i, kind, j, f"vidstg-{vid}-{KINDS[kind]}{counts[key]}"))
    return queries


@dataclass
class _Maker:
    """Makes the sample of one query: reads the video's VidOR boxes and decodes its sampled frames."""

    root: Path
    items: list[Any]
    vidor: dict[str, Path]
    sampling: Sampling
    where: str

    def make(self, query: Query) -> Sample:
        sid, where = query.sample_id, self.where
        item = self.items[query.item]
        vid = str(field(item, "vid", sid, where, (str, int)))
        name = f"{query.kind}[{query.index}]"
        entries = field(item, query.kind, sid, where, list)
        entry = entries[query.index]
        text = field(entry, "description", sid, f"{where}: {name}", str)
        target = field(entry, "target_id", sid, f"{where}: {name}", int)
        categories = {
            o.get("tid"): o.get("category")
            for o in field(item, "subject/objects", sid, where, list)
            if isinstance(o, dict)
        }
        category = categories.get(target)
        if not isinstance(category, str):
            raise SampleError(sid, f"{name}.target_id", f"no object {target} in subject/objects", where)
        width, height, count = (field(item, key, sid, where, int) for key in ("width", "height", "frame_count"))
        begin, end = _span(item, "used_segment", sid, where)
        gt = _span(item, "temporal_gt", sid, where)
        if not 0 <= begin <= end or begin >= count:
            raise SampleError(sid, "used_segment", f"[{begin}, {end}] is not within the {count} frames", where)
        if not 0 <= gt[0] < gt[1] <= count:
            raise SampleError(sid, "temporal_gt", f"[{gt[0]}, {gt[1]}) is not within the {count} frames", where)
        if vid not in self.vidor:
            raise SampleError(sid, "vid", f"no VidOR annotation */{vid}.json", where)
        vidor_path = self.vidor[vid]
        vidor = read_json(vidor_path, sid, "vidor annotation")
        video = field(vidor, "video_path", sid, str(vidor_path), str)
        video_path = inside(self.root, Path("vidor", "video", video), sid, "video_path", str(vidor_path))
        units = frames(video_path, self.sampling, sid, "video", where, segment=(begin, min(end, count - 1)))
        regions, distractors = self._regions(units, vidor, vidor_path, sid, target, gt, (width, height))
        return Sample(
            id=sid,
            units=units,
            question=text if query.kind == "questions" else f"Locate: {text}",
            answer=category,
            regions=regions,
            distractors=distractors,
            meta={
                "domain": "vidstg",
                "task": "exact",
                "query": query.kind[:-1],
                "vid": vid,
                "target_id": target,
                "temporal_gt": list(gt),
            },
        )

    def _regions(
        self,
        units: list[VisualUnit],
        vidor: Any,
        vidor_path: Path,
        sid: str,
        target: int,
        gt: tuple[int, int],
        size: tuple[int, int],
    ) -> tuple[list[Region], list[Region]]:
        """The target's boxes on the sampled frames inside the ground truth window, and the other objects'
        boxes on those frames (each tagged with its object's tid), in the units' pixels."""
        trajectories = field(vidor, "trajectories", sid, str(vidor_path), list)
        regions: list[Region] = []
        distractors: list[Region] = []
        in_gt = [(k, u, u.frame) for k, u in enumerate(units) if u.frame is not None and gt[0] <= u.frame < gt[1]]
        if not in_gt:
            raise SampleError(
                sid,
                "temporal_gt",
                f"no frame sampled at {self.sampling.fps} fps lies in [{gt[0]}, {gt[1]})",
                self.where,
            )
        for k, unit, frame in in_gt:
            boxes = _boxes(trajectories, frame, sid, str(vidor_path), size)
            if target not in boxes:
                continue
            for tid, box in boxes.items():
                (regions if tid == target else distractors).append(Region(k, _scaled(box, size, unit), str(tid)))
        if not regions:
            raise SampleError(
                sid,
                "regions",
                f"object {target} has no box on the frames sampled in [{gt[0]}, {gt[1]})",
                str(vidor_path),
            )
        return regions, distractors


def _span(item: Any, key: str, sid: str, where: str) -> tuple[int, int]:
    """(begin_fid, end_fid) of one of an item's frame spans."""
    span = field(item, key, sid, where, dict)
    return field(span, "begin_fid", sid, f"{where}: {key}", int), field(span, "end_fid", sid, f"{where}: {key}", int)


def _scaled(box: Box, size: tuple[int, int], unit: VisualUnit) -> Box:
    """A box in the annotation's pixels (`size`), in the unit's; multiplying first keeps a box on the frame's
    edge exactly on it."""
    x0, y0, x1, y1 = box
    w, h = size
    return (x0 * unit.width / w, y0 * unit.height / h, x1 * unit.width / w, y1 * unit.height / h)


def _boxes(trajectories: list[Any], frame: int, sid: str, where: str, size: tuple[int, int]) -> dict[int, Box]:
    """tid -> box of the objects VidOR tracks on one frame, refused when a box is malformed or leaves the frame."""
    name = f"trajectories[{frame}]"
    if frame >= len(trajectories) or not isinstance(trajectories[frame], list):
        raise SampleError(sid, name, f"missing (the file has {len(trajectories)} frames)", where)
    boxes: dict[int, Box] = {}
    for obj in trajectories[frame]:
        tid = field(obj, "tid", sid, where, int)
        bbox = field(obj, "bbox", sid, f"{where}: {name}", dict)
        x0, y0, x1, y1 = (
            field(bbox, k, sid, f"{where}: {name}", (int, float)) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
            raise SampleError(
                sid,
                f"{name}.bbox",
                f"box {[x0, y0, x1, y1]} of object {tid} is outside the {size[0]}x{size[1]} frame",
                where,
            )
        boxes[tid] = (float(x0), float(y0), float(x1), float(y1))
    return boxes

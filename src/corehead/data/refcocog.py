"""RefCOCOg (umd split) as the official release unpacks: referring expressions grounded to COCO boxes.

Layout under ROOT (as published, not rearranged):
- `refcocog/refs(umd).p`: a Python-2 pickle, a list of refs `{ref_id, ann_id, image_id, category_id, split,
  sentences: [{sent_id, sent, ...}], ...}`;
- `refcocog/instances.json`: COCO images (sizes), annotations (bbox, polygon segmentation, iscrowd), categories;
- `train2014/COCO_train2014_%012d.jpg`: the images, named from image_id (the ref's own file_name carries an
  annotation suffix and names no file).

One grounding sample per referring sentence: the question quotes the sentence, the region is the referred
annotation's box and the distractors are the other (non-crowd) annotations of the same image.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycocotools import mask as coco_mask

from corehead.data import check_options
from corehead.data.public import field as need
from corehead.data.public import inside, samples, seeded
from corehead.data.sample import Box, Region, Sample, SampleError, VisualUnit

OPTIONS = {
    "split": "train, val or test (default val)",
    "box": "bbox (the annotation's box, default) or mask (the tight box of its segmentation mask)",
}
SPLITS = ("train", "val", "test")
BOXES = ("bbox", "mask")
REFS = Path("refcocog") / "refs(umd).p"
INSTANCES = Path("refcocog") / "instances.json"
IMAGES = Path("train2014")
LAYOUT = "RefCOCOg unpacks as ROOT/refcocog/refs(umd).p, ROOT/refcocog/instances.json and ROOT/train2014/*.jpg"

Item = tuple[dict[str, Any], Any]  # (ref, one of its sentences; None when the ref has no usable sentences)


class _Refused(pickle.UnpicklingError):
    """A pickle that asks for a global (a class or function): refs never need one, code execution would."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only containers and scalars: every global lookup (the door to code execution) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"{module}.{name}")


def read_refs(path: Path) -> list[dict[str, Any]]:
    """The refs list of an untrusted pickle; Python-2 byte strings are read as UTF-8, else as Latin-1."""
    data = path.read_bytes()
    try:
        try:
            refs = _PlainUnpickler(io.BytesIO(data), encoding="utf-8").load()
        except UnicodeDecodeError:
            refs = _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as exc:
        raise ValueError(
            f"{path}: refuses to load {exc} from the pickle; a refs file holds only plain containers and scalars"
        ) from None
    except Exception as exc:  # a corrupt pickle raises anything from EOFError to KeyError
        raise ValueError(f"{path}: not a readable refs pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise ValueError(f"{path}: expected a list of refs (dicts), got {type(refs).__name__}")
    return refs


@dataclass
class Instances:
    """instances.json indexed by id: images, annotations (and per image), category names."""

    images: dict[Any, dict[str, Any]] = field(default_factory=dict)
    annotations: dict[Any, dict[str, Any]] = field(default_factory=dict)
    by_image: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)
    categories: dict[Any, str] = field(default_factory=dict)


def read_instances(path: Path) -> Instances:
    """Index a COCO instances file; entries without an id cannot be referred to and are left out."""
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{path}: expected a COCO object with lists 'images', 'annotations' and 'categories'")
    index = Instances()
    for image in data["images"]:
        if isinstance(image, dict) and "id" in image:
            index.images[image["id"]] = image
    for ann in data["annotations"]:
        if isinstance(ann, dict) and "id" in ann:
            index.annotations[ann["id"]] = ann
            index.by_image.setdefault(ann.get("image_id"), []).append(ann)
    for category in data.get("categories") or []:
        if isinstance(category, dict) and "id" in category:
            index.categories[category["id"]] = str(category.get("name", ""))
    return index


def annotation_box(ann: dict[str, Any], mode: str, width: int, height: int, sid: str, where: str) -> Box:
    """The annotation's region [x0, y0, x1, y1] in image pixels: its bbox [x, y, w, h], or (mode 'mask') the
    tight box of its segmentation rasterised at width x height."""
    if mode == "bbox":
        bbox = need(ann, "bbox", sid, where, list)
        if len(bbox) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox):
            raise SampleError(sid, "bbox", f"expected 4 numbers [x, y, w, h], got {bbox!r}", where)
        x, y, w, h = (float(v) for v in bbox)
        return (x, y, x + w, y + h)
    segmentation = need(ann, "segmentation", sid, where, (list, dict))
    try:
        if isinstance(segmentation, list):  # polygons, one object possibly in several parts
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:  # compressed RLE, as stored
            rle = segmentation
        x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    except Exception as exc:  # pycocotools raises bare Exception (and TypeError/KeyError) on malformed input
        raise SampleError(sid, "segmentation", f"not a COCO polygon list or RLE ({exc})", where) from None
    return (x, y, x + w, y + h)


def _distractors(
    anns: list[dict[str, Any]], ann_id: Any, mode: str, width: int, height: int, where: str
) -> list[Region]:
    """Boxes of the image's other annotations, each its own object (named by its annotation id); crowds and boxes
    that are malformed, empty or outside are left out."""
    regions = []
    for ann in anns:
        if ann.get("id") == ann_id or ann.get("iscrowd"):
            continue
        try:
            x0, y0, x1, y1 = annotation_box(ann, mode, width, height, "", where)
        except SampleError:
            continue
        if 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height:
            regions.append(Region(0, (x0, y0, x1, y1), object=str(ann.get("id"))))
    return regions


def _items(refs: list[dict[str, Any]], split: str) -> list[Item]:
    """(ref, sentence) for each sentence of the split's refs, in file order; a ref whose split or sentences
    are missing becomes one item that fails by name."""
    items: list[Item] = []
    for ref in refs:
        sentences = ref.get("sentences")
        if not isinstance(ref.get("split"), str) or not isinstance(sentences, list) or not sentences:
            items.append((ref, None))
        elif ref["split"] == split:
            items.extend((ref, sentence) for sentence in sentences)
    return items


def _sample_id(ref: dict[str, Any], sentence: Any) -> str:
    sent_id = sentence.get("sent_id", "?") if isinstance(sentence, dict) else "?"
    return f"refcocog-{ref.get('ref_id', '?')}-{sent_id}"


def _option(options: dict[str, str], key: str, choices: tuple[str, ...], default: str) -> str:
    value = options.get(key, default)
    if value not in choices:
        raise ValueError(f"refcocog option {key}={value!r}: choose from {', '.join(choices)}")
    return value


def _release_file(root: Path, relative: Path) -> Path:
    """A file of the release's index, inside the root, or an error that shows the expected layout."""
    try:
        return inside(root, relative, "-", str(relative))
    except SampleError as exc:
        raise FileNotFoundError(f"{root / relative}: {exc.problem}; {LAYOUT}") from None


def load(
    root: Path, options: dict[str, str], seed: int = 0, skip: Callable[[SampleError], None] | None = None
) -> Iterator[Sample]:
    """The split's referring sentences as grounding samples, in a seeded order (options: split, box)."""
    check_options("refcocog", options, OPTIONS)
    split = _option(options, "split", SPLITS, "val")
    mode = _option(options, "box", BOXES, "bbox")
    refs_path = _release_file(root, REFS)
    instances_path = _release_file(root, INSTANCES)
    refs = read_refs(refs_path)
    index = read_instances(instances_path)
    refs_where, coco_where = str(refs_path), str(instances_path)

    def make(item: Item) -> Sample:
        ref, sentence = item
        sid = _sample_id(ref, sentence)
        need(ref, "split", sid, refs_where, str)
        if sentence is None:
            raise SampleError(sid, "sentences", "missing or empty: a ref needs its referring sentences", refs_where)
        text = need(sentence, "sent", sid, refs_where, str).strip()
        if not text:
            raise SampleError(sid, "sent", "empty referring sentence", refs_where)
        ref_id = need(ref, "ref_id", sid, refs_where, int)
        ann_id = need(ref, "ann_id", sid, refs_where, int)
        image_id = need(ref, "image_id", sid, refs_where, int)
        category_id = need(ref, "category_id", sid, refs_where, int)
        image = index.images.get(image_id)
        if image is None:
            raise SampleError(sid, "image_id", f"no image {image_id} in instances.json", coco_where)
        ann = index.annotations.get(ann_id)
        if ann is None:
            raise SampleError(sid, "ann_id", f"no annotation {ann_id} in instances.json", coco_where)
        if ann.get("image_id") != image_id:
            raise SampleError(sid, "ann_id", f"annotation {ann_id} is on image {ann.get('image_id')}", coco_where)
        if category_id not in index.categories:
            raise SampleError(sid, "category_id", f"no category {category_id} in instances.json", coco_where)
        width = need(image, "width", sid, coco_where, int)
        height = need(image, "height", sid, coco_where, int)
        name = IMAGES / f"COCO_train2014_{image_id:012d}.jpg"
        path = inside(root, name, sid, "units[0].source", str(root / IMAGES))
        box = annotation_box(ann, mode, width, height, sid, coco_where)
        return Sample(
            id=sid,
            units=[VisualUnit("image", str(path), width, height)],
            question=f'Locate "{text}" in the image and give its bounding box.',
            answer="[" + ", ".join(str(round(v)) for v in box) + "]",
            regions=[Region(0, box)],
            distractors=_distractors(index.by_image.get(image_id, []), ann_id, mode, width, height, coco_where),
            meta={
                "domain": "refcocog",
                "task": "grounding",
                "ref_id": ref_id,
                "ann_id": ann_id,
                "category": index.categories[category_id],
            },
        )

    return samples(seeded(_items(refs, split), seed), make, skip, coco_where)

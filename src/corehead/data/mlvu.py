"""MLVU (long-video understanding), dev set, as its release unpacks: multiple-choice questions about videos.

Layout under ROOT: `json/<n>_<task>.json` (1_plotQA ... 9_summary; each a list of items with `video`,
`duration`, `question`, `candidates`, `answer` (the right candidate's text) and `question_type`) and the videos
at `video/<n>_<task>/<video>` (or `video/<task>/<video>`, as some copies have it). The open-ended tasks
(sub_scene, summary: no candidates) are passed over. MLVU has no evidence regions: its samples can be
answered (eval, accelerate) but not scored for RAM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corehead.data import check_options
from corehead.data.public import field, inside, samples, seeded
from corehead.data.sample import Sample, SampleError, record_label
from corehead.data.video import OPTIONS, Sampling, frames, read_json

TASKS: tuple[str, ...] = (
    "plotQA",
    "needle",
    "ego",
    "count",
    "order",
    "anomaly_reco",
    "topic_reasoning",
    "sub_scene",
    "summary",
)
OPEN_ENDED: tuple[str, ...] = ("sub_scene", "summary")
CHOICE_TASKS = tuple(t for t in TASKS if t not in OPEN_ENDED)
ALLOWED: dict[str, str] = {
    "tasks": f"comma-separated tasks to load (default all multiple-choice ones: {','.join(CHOICE_TASKS)})",
    **OPTIONS,
}


@dataclass(frozen=True)
class Item:
    """One question of a task file, with the file's name (`1_plotQA`) and its task (`plotQA`)."""

    stem: str
    task: str
    index: int
    raw: Any

    @property
    def sample_id(self) -> str:
        return f"mlvu-{self.task}-{self.index}"


def load(
    root: Path, options: dict[str, str], seed: int = 0, skip: Callable[[SampleError], None] | None = None
) -> Iterator[Sample]:
    """MLVU's multiple-choice questions, in a seeded order."""
    check_options("mlvu", options, ALLOWED)
    sampling = Sampling.parse("mlvu", options)
    tasks = _tasks(options.get("tasks"))
    files = {path.stem.partition("_")[2]: path for path in sorted((root / "json").glob("*_*.json"))}
    missing = [t for t in tasks if t not in files] if "tasks" in options else []
    if missing or not any(t in files for t in tasks):
        raise FileNotFoundError(
            f"mlvu: no {root / 'json'}/<n>_<task>.json for {', '.join(missing or tasks)} (the MLVU dev set's json folder)"
        )
    items: list[Item] = []
    for task in tasks:
        if task not in files:
            continue
        try:
            raw = read_json(files[task], "?", "json")
            if not isinstance(raw, list):
                raise SampleError("?", "json", f"expected a list of items, got {type(raw).__name__}", str(files[task]))
        except SampleError as error:
            if skip is None:
                raise
            skip(error)
            continue
        items.extend(Item(files[task].stem, task, i, entry) for i, entry in enumerate(raw))
    return samples(seeded(items, seed), lambda item: _make(root, item, sampling), skip, require_region=False)


def _tasks(option: str | None) -> list[str]:
    """The tasks named by the `tasks` option (all multiple-choice ones by default)."""
    if option is None:
        return list(CHOICE_TASKS)
    tasks = [t.strip() for t in option.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(
            f"mlvu: unknown task(s) {', '.join(unknown) or '(none)'}; choose from {','.join(CHOICE_TASKS)}"
        )
    open_ended = [t for t in tasks if t in OPEN_ENDED]
    if open_ended:
        raise ValueError(
            f"mlvu: {', '.join(open_ended)} are open-ended (no candidates); corehead loads {','.join(CHOICE_TASKS)}"
        )
    return tasks


def _make(root: Path, item: Item, sampling: Sampling) -> Sample | None:
    """The sample of one multiple-choice item; None for an open-ended one (no candidates). An error names the
    item by its place in the task file, its video and its question."""
    try:
        return _item_sample(root, item, sampling)
    except SampleError as error:
        known = item.raw if isinstance(item.raw, dict) else {}
        raise error.named(record_label(known.get("video", "?"), known.get("question", "?"), "video")) from None


def _item_sample(root: Path, item: Item, sampling: Sampling) -> Sample | None:
    sid, where = item.sample_id, f"json/{item.stem}.json[{item.index}]"
    if isinstance(item.raw, dict) and not item.raw.get("candidates"):
        return None
    candidates = [str(c) for c in field(item.raw, "candidates", sid, where, list)]
    if len(candidates) > 26:
        raise SampleError(sid, "candidates", f"{len(candidates)} options; at most 26 can be lettered", where)
    question = field(item.raw, "question", sid, where, str)
    answer = str(field(item.raw, "answer", sid, where, (str, int, float)))
    if answer not in candidates:
        raise SampleError(sid, "answer", f"{answer!r} is not one of the candidates {candidates}", where)
    name = field(item.raw, "video", sid, where, str)
    folder = next((f for f in (item.stem, item.task) if (root / "video" / f / name).exists()), item.stem)
    path = inside(root, Path("video", folder, name), sid, "video", where)
    options = "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates))
    return Sample(
        id=sid,
        units=frames(path, sampling, sid, "video", where),
        question=f"{question}\n{options}\nAnswer with the option's letter.",
        answer=answer,
        regions=[],
        meta={
            "domain": "mlvu",
            "task": "choice",
            "candidates": candidates,
            "question_type": str(item.raw.get("question_type", item.task)),
        },
    )

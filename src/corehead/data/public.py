"""What every public-dataset loader shares: paths that stay inside the root, a seeded order, per-sample errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from corehead.data.sample import Sample, SampleError, validate

Item = TypeVar("Item")


def inside(root: Path, relative: str | Path, sample_id: str, field_name: str, where: str = "") -> Path:
    """root / relative, refused (SampleError) when it escapes the root or does not exist.

    The check is on the path as written (absolute paths and `..` are refused); symlinks the user placed
    inside the root (a shared COCO image folder) are followed.
    """
    base = Path(os.path.abspath(root))
    path = Path(os.path.normpath(base / relative))
    if Path(relative).is_absolute() or not path.is_relative_to(base):
        raise SampleError(sample_id, field_name, f"path {str(relative)!r} leaves the dataset folder", where)
    if not path.exists():
        raise SampleError(sample_id, field_name, f"missing file {path}", where)
    return path


def seeded(items: Sequence[Item], seed: int) -> Iterator[Item]:
    """The items in a random order fixed by `seed` (so the first n are a seeded subsample)."""
    for i in np.random.default_rng(seed).permutation(len(items)):
        yield items[int(i)]


def samples(
    items: Iterator[Item],
    make: Callable[[Item], Sample | None],
    skip: Callable[[SampleError], None] | None,
    where: str = "",
    require_region: bool = True,
) -> Iterator[Sample]:
    """make(item) for each item, validated; a SampleError stops the stream, or goes to `skip` and is passed
    over. `make` returns None for items that are not samples of this task (e.g. open-ended questions)."""
    for item in items:
        try:
            sample = make(item)
            if sample is None:
                continue
            validate(sample, where=where, require_region=require_region)
        except SampleError as error:
            if skip is None:
                raise
            skip(error)
            continue
        yield sample


def field(mapping: Any, key: str, sample_id: str, where: str = "", kind: type | tuple[type, ...] = object) -> Any:
    """mapping[key], or a SampleError naming the field when it is missing or of the wrong type."""
    if not isinstance(mapping, dict) or key not in mapping or mapping[key] is None:
        raise SampleError(sample_id, key, "missing", where)
    value = mapping[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SampleError(sample_id, key, f"expected {names}, got {type(value).__name__}", where)
    return value

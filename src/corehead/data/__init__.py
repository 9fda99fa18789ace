"""Data sources: every one yields validated `Sample`s.

A dataset SPEC is `synthetic:DOMAIN` (scenes, pages, clips, or all; generated on the fly), the path of a
JSONL file in corehead's format (or of a folder holding `samples.jsonl`), or a public dataset as its
official release unpacks: `NAME:ROOT[?key=value&...]` with NAME one of PUBLIC.

A public loader is a module with `load(root, options, seed, skip) -> Iterator[Sample]`: it streams samples
in a seeded order (so `n` samples are a seeded subsample), raises `SampleError` naming the file, sample and
field on bad input, or, when `skip` is given, hands it the error and goes on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from corehead.data import synthetic
from corehead.data.sample import LoadReport, Sample, SampleError, read_jsonl, validate

__all__ = ["LoadReport", "Sample", "SampleError", "load_dataset"]

PUBLIC: dict[str, str] = {
    "refcocog": "corehead.data.refcocog",
    "mmdocir": "corehead.data.mmdocir",
    "mmlongbench-doc": "corehead.data.mmlongbench",
    "vidstg": "corehead.data.vidstg",
    "mlvu": "corehead.data.mlvu",
}


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]] | None:
    """`NAME:ROOT?key=value&...` -> (NAME, ROOT, options) for a public dataset; None for other specs."""
    name, sep, rest = spec.partition(":")
    if not sep or name not in PUBLIC:
        return None
    root, _, query = rest.partition("?")
    if not root:
        raise ValueError(f"{spec!r}: give the dataset's folder, as in {name}:/data/{name}")
    return name, Path(root), dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))


def check_options(name: str, options: dict[str, str], allowed: dict[str, str]) -> None:
    """Refuse option keys a loader does not know, listing the ones it does (key: meaning)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in allowed.items()) or "none"
        raise ValueError(f"{name} does not take option(s) {', '.join(unknown)}; it takes {known}")


def _public(spec: str, skip_invalid: bool, report: LoadReport | None, seed: int) -> Iterator[Sample] | None:
    parsed = parse_spec(spec)
    if parsed is None:
        return None
    name, root, options = parsed
    if not root.is_dir():
        raise FileNotFoundError(f"{spec!r}: no folder {root} (the {name} release, unpacked as published)")
    module: Any = importlib.import_module(PUBLIC[name])
    skip: Callable[[SampleError], None] | None = None
    if skip_invalid:

        def skip(error: SampleError) -> None:
            if report is not None:
                report.skipped.append(str(error))

    return module.load(root, options, seed=seed, skip=skip)


def load_dataset(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    skip_invalid: bool = False,
    report: LoadReport | None = None,
    require_answer: bool = True,
) -> list[Sample]:
    """Load up to `n` samples from SPEC. Synthetic data needs `n` (default 100) and is drawn from `seed`;
    public datasets come in a seeded order."""
    if spec.startswith("synthetic:"):
        domain = spec.split(":", 1)[1]
        if domain not in (*synthetic.DOMAINS, "all"):
            raise ValueError(
                f"unknown synthetic domain {domain!r} in {spec!r}; choose from {', '.join(synthetic.DOMAINS)}, all"
            )
        samples = list(synthetic.generate(domain, 100 if n is None else n, seed=seed))
        for s in samples:
            validate(s)
        return samples
    public = _public(spec, skip_invalid, report, seed)
    if public is not None:
        return list(islice(public, n))
    path = Path(spec)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"no dataset at {spec!r}: expected synthetic:DOMAIN, NAME:ROOT for a public dataset "
            f"({', '.join(PUBLIC)}), a .jsonl file or a folder with samples.jsonl"
        )
    rows = read_jsonl(path, skip_invalid=skip_invalid, report=report, require_answer=require_answer)
    return list(islice(rows, n))

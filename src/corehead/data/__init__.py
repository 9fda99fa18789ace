"""Data sources: every one yields validated `Sample`s.

A dataset SPEC is either `synthetic:DOMAIN` (scenes, pages, clips, or all; generated on the fly) or the
path of a JSONL file in corehead's format (or of a folder holding `samples.jsonl`).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from corehead.data import synthetic
from corehead.data.sample import LoadReport, Sample, SampleError, read_jsonl, validate

__all__ = ["LoadReport", "Sample", "SampleError", "load_dataset"]


def load_dataset(
    spec: str,
    n: int | None = None,
    seed: int = 0,
    skip_invalid: bool = False,
    report: LoadReport | None = None,
    require_answer: bool = True,
) -> list[Sample]:
    """Load up to `n` samples from SPEC. Synthetic data needs `n` (default 100) and is drawn from `seed`."""
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
    path = Path(spec)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"no dataset at {spec!r}: expected synthetic:DOMAIN, a .jsonl file or a folder with samples.jsonl"
        )
    rows = read_jsonl(path, skip_invalid=skip_invalid, report=report, require_answer=require_answer)
    return list(islice(rows, n))

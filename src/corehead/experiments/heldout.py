"""Held out by construction: a test run leaves out the samples its head set was scored on.

A HeadSet records what it was scored on (`HeadSet.scored`: dataset, seed, n, the sorted sample ids and
their digest). `held_out` compares a test run's samples with it: overlapping samples are excluded, unless
the run allows the overlap, in which case they are kept and the result is marked. A head set without
that record (an older heads.json) cannot be checked: nothing is excluded and the run says so.

The manifest and the summary JSON of `ablate` and `accelerate` record `HeldOut.record()`:
{"excluded": n, "overlap": n, "allow_overlap": bool, "scored_digest": str | None}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corehead.data.sample import Sample
from corehead.heads import ids_digest


@dataclass(frozen=True)
class HeldOut:
    """A test run's samples after the held-out check: `samples` kept, `overlap` the ids among them (or
    among those asked for, when excluded) that the head set was scored on, `allowed` whether they were
    kept, `known` whether the head set records its scored samples (`digest` their digest)."""

    samples: list[Sample]
    overlap: list[str]
    allowed: bool
    known: bool
    digest: str | None = None

    @property
    def excluded(self) -> int:
        """How many of the samples asked for were left out."""
        return 0 if self.allowed else len(self.overlap)

    def record(self) -> dict[str, Any]:
        """What the manifest and the summary JSON record."""
        return {
            "excluded": self.excluded,
            "overlap": len(self.overlap),
            "allow_overlap": self.allowed,
            "scored_digest": self.digest,
        }

    def message(self) -> str:
        """The line a command prints about it (a warning when the overlap is kept or cannot be known)."""
        if not self.known:
            return "warning: the head set does not record the samples it was scored on; overlap not checked"
        if not self.overlap:
            return "held out: none of the samples was scored on"
        if self.allowed:
            return f"warning: {len(self.overlap)} sample(s) were also scored on; kept (--allow-overlap)"
        return f"held out: excluded {len(self.overlap)} sample(s) the head set was scored on"


def held_out(samples: list[Sample], headset: Any, allow_overlap: bool) -> HeldOut:
    """`samples` less those `headset` was scored on (kept, and marked, with `allow_overlap`). An error
    when nothing is left to test."""
    scored = getattr(headset, "scored", None) or {}
    ids = scored.get("ids")
    if ids is None:
        return HeldOut(list(samples), [], allow_overlap, False)
    seen = set(ids)
    overlap = [s.id for s in samples if s.id in seen]
    digest = scored.get("digest") or ids_digest(ids)
    kept = list(samples) if allow_overlap else [s for s in samples if s.id not in seen]
    if samples and not kept:
        raise ValueError(
            f"all {len(samples)} samples were scored on by the head set ({scored.get('dataset', '?')}, seed "
            f"{scored.get('seed')}): test on other samples (another --seed or data), or pass --allow-overlap"
        )
    return HeldOut(kept, overlap, allow_overlap, True, digest)

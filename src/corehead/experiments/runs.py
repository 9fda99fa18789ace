"""Run folders, shared by eval, score, ablate and accelerate: settings and progress in manifest.json,
samples batched by length and sharded over processes, each process's rows merged by the main one.

A run is one process, or N under `accelerate launch -m corehead ...` (or `--num-processes N`). The samples
are sorted by estimated length and cut into batches over the whole dataset, and batch i goes to rank
i % N: every sample is computed in the same batch whatever N is, so a sharded run's rows are a
single-process run's rows. Each rank appends to its own files as it goes (`NAME.rK.jsonl`, or parquet parts
tagged rK); after a barrier the main process merges them, in dataset order, into the run's file. A killed
run is resumed by relaunching the same command, with any N: finished rows are read back and skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from corehead.data.sample import Sample
from corehead.runfolder import RunFolder


@dataclass(frozen=True)
class Shard:
    """This process's place in a run: rank `rank` of `world` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        return f"r{self.rank}"

    def batches(self, samples: Sequence[Sample], batch_size: int) -> list[list[Sample]]:
        """This rank's batches: every world-th batch of `length_batches` over all samples."""
        return length_batches(samples, batch_size)[self.rank :: self.world]

    def wait(self) -> None:
        """A barrier across the run's processes (nothing to wait for in a single process)."""
        if self.world > 1:
            torch.distributed.barrier()


def current_shard() -> Shard:
    """The shard of this process: from accelerate's state under a distributed launch, else the only one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Shard()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only machines use gloo
    return Shard(state.process_index, state.num_processes)


def sample_length(sample: Sample) -> tuple[int, int]:
    """A cheap sort key standing for a sample's sequence length: its pixels, then its text."""
    return sum(u.width * u.height for u in sample.units), len(sample.question) + len(sample.answer)


def length_batches(samples: Sequence[Sample], batch_size: int) -> list[list[Sample]]:
    """Batches of samples of similar length (less padding), deterministic for the sample list."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    order = sorted(range(len(samples)), key=lambda i: (sample_length(samples[i]), i))
    return [[samples[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def dataset_order(samples: Sequence[Sample]) -> Callable[[str], tuple[int, str]]:
    """Sort key of a sample id: its position in `samples` (ids of other runs' samples go last, by id)."""
    position = {s.id: i for i, s in enumerate(samples)}
    return lambda sample_id: (position.get(sample_id, len(position)), sample_id)


class Run:
    """A run folder of one command: checks and records its settings and progress in manifest.json.

    `settings` are what the rows depend on; a rerun into the same folder with other settings (or another
    command's folder) is refused. The manifest also records how much is done, whether the run is complete
    and its wall time, summed over the launches that got to the end (a killed launch's time is not known).
    """

    def __init__(self, out: Path, command: str, settings: dict[str, Any], shard: Shard, info: dict | None = None):
        self.out, self.command, self.shard = out, command, shard
        self.path = RunFolder(out).manifest_path
        out.mkdir(parents=True, exist_ok=True)
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        if old.get("command", command) != command:
            raise ValueError(f"{out} holds a {old['command']} run; use a new --out folder for {command}")
        changed = sorted(k for k in settings if k in old and old[k] != _plain(settings[k]))
        if changed:
            was = "; ".join(f"{k} was {json.dumps(old[k])}" for k in changed)
            raise ValueError(f"{out} holds a run with other settings ({was}); use a new --out folder")
        from corehead import __version__

        self.began = time.time()
        self.manifest = {
            **old,
            "command": command,
            **_plain(settings),
            **(info or {}),
            "corehead": __version__,
            "processes": shard.world,
            "started": old.get("started", _now()),
            "wall_s": float(old.get("wall_s", 0.0)),
        }
        shard.wait()  # every rank has checked the old manifest before the main rank rewrites it
        if shard.main:
            self._write(done=old.get("done"), complete=False)

    def finish(self, done: int, total: int) -> None:
        """Record the run as finished by this launch (main process): progress, end time, wall time."""
        if self.shard.main:
            self.manifest["wall_s"] = round(self.manifest["wall_s"] + time.time() - self.began, 3)
            self.manifest["finished"] = _now()
            self._write(done={"samples": done, "of": total}, complete=done >= total)

    def _write(self, done: Any, complete: bool) -> None:
        manifest = {**self.manifest, "done": done, "complete": complete}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(self.path)


class RowLog:
    """The JSONL rows of a run, one per key: this process appends to its own file as rows are made (the
    file itself in a single process, `NAME.rK.jsonl` beside it under a distributed launch); `merge` writes
    all of them, deduplicated and in order, to the file and removes the per-rank files."""

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], Any], shard: Shard):
        self.path, self.key, self.shard = path, key, shard
        self.pattern = f"{path.stem}.r*{path.suffix}"
        self.mine = path if shard.world == 1 else path.with_name(f"{path.stem}.{shard.tag}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list[dict[str, Any]]:
        """Every finished row of the run, once per key (a torn last line is dropped: its row is redone);
        this process's own file is rewritten without torn lines so appends start clean."""
        rows: dict[Any, dict[str, Any]] = {}
        for path in [self.path, *sorted(self.path.parent.glob(self.pattern))]:
            if not path.exists():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            good = []
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                good.append(line)
                rows.setdefault(self.key(row), row)
            if path == self.mine and len(good) < len(lines):
                path.write_text("".join(line + "\n" for line in good), encoding="utf-8")
        return list(rows.values())

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.mine.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")

    def merge(self, order: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
        """After every rank is done: all rows, deduplicated and sorted by `order`, written atomically to the
        run's file by the main process (the per-rank files then removed). Every rank gets the merged rows."""
        self.shard.wait()
        if self.shard.main:
            rows = sorted(self.read(), key=order)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            tmp.replace(self.path)
            for path in self.path.parent.glob(self.pattern):
                path.unlink()
        self.shard.wait()
        if self.shard.main:
            return rows
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so settings compare equal across runs."""
    return json.loads(json.dumps(value))

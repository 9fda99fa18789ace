"""One runner for every study (eval, score, ablate, accelerate): manifest, resume, sharding, merge, summary.

A `Study` is a frozen dataclass: its fields are the experiment's configuration, and the part of it the rows
depend on (`settings`) is checked by the run folder's manifest, so a rerun with other settings is refused.
It says which rows a sample needs (`keys`), where rows are kept (`store`), how a batch is worked
(`session`), and what a finished run sums up to (`summarise`, then `publish`: summary JSON and figures).

`run_study` does the rest, once for all of them: it checks and records the manifest, reads back the rows
already there, cuts this process's batches (experiments/runs.py), works each batch's missing rows and
appends them as they are produced, merges every process's rows in dataset order, records the run as
finished, sums it up, and has the main process write the summary and its figures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from corehead.data.sample import Sample
from corehead.experiments.runs import RowLog, Run, Shard, current_shard, dataset_order
from corehead.models.base import ChatAdapter
from corehead.runfolder import RunFolder

Position = Callable[[str], Any]  # sort key of a sample id: its place in the dataset
Work = Callable[[list[Sample], set[Hashable]], Iterator[tuple[Any, int]]]  # batch, done -> (rows, progress)


class RowStore(Protocol):
    """Where a run's rows are kept as they are produced, and merged once every process is done."""

    def done(self) -> set[Hashable]:
        """The keys of the rows already there (recovering what an interrupted run left)."""
        ...

    def append(self, rows: Any) -> None: ...

    def merge(self) -> Any:
        """Every process's rows, once each, in dataset order (every process gets them)."""
        ...

    def keys(self, rows: Any) -> set[Hashable]: ...

    def only(self, rows: Any, ids: set[str]) -> Any:
        """The rows of the samples `ids` (a folder may hold rows of other samples)."""
        ...


class Study(ABC):
    """One experiment over samples, as a frozen dataclass of its configuration (see the module doc)."""

    name: ClassVar[str]  # the command, as the manifest and RunFolder name it
    batch_size: int

    def settings(self, adapter: ChatAdapter) -> dict[str, Any] | None:
        """What the rows depend on, checked by the manifest (None: the run keeps no manifest)."""
        return None

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        """What the manifest only records."""
        return {}

    @abstractmethod
    def keys(self, sample: Sample) -> list[Hashable]:
        """The keys of the rows `sample` needs; progress counts them."""

    @abstractmethod
    def store(self, out: Path | None, shard: Shard, position: Position) -> RowStore:
        """Where the rows go (out None: kept in memory)."""

    @abstractmethod
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> AbstractContextManager[Work]:
        """What a run needs once (head means, patch sources, hooks), around the work on each batch: given the
        batch's samples with rows missing and the keys done, it yields (new rows, how many keys they hold)."""

    def summarise(self, adapter: ChatAdapter, samples: list[Sample], rows: Any, out: Path | None, shard: Shard) -> Any:
        """What the run sums up to (every process; None: nothing)."""
        return None

    def publish(self, folder: RunFolder, summary: Any, samples: list[Sample]) -> None:
        """Write the summary and its figures into the run folder (main process); here the summary as JSON."""
        folder.write_summary(self.name, summary)


@dataclass
class Outcome:
    """A finished run: its rows (of the samples asked for, in dataset order), its summary and its store."""

    rows: Any
    summary: Any
    store: RowStore


def run_study(
    study: Study,
    adapter: ChatAdapter,
    samples: list[Sample],
    out: Path | None,
    shard: Shard | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Run `study` over `samples` into the run folder `out` (resuming it), sharded over the processes of a
    distributed launch; every process returns the merged rows and the summary."""
    shard = shard or current_shard()
    settings = study.settings(adapter)
    run = None
    if out is not None and settings is not None:
        run = Run(out, study.name, {**settings, "prompt": adapter.prompt}, shard, study.info(adapter))
    store = study.store(out, shard, dataset_order(samples))
    _work_through(study, adapter, samples, store, shard, on_progress)
    rows = store.only(store.merge(), {s.id for s in samples})
    if run is not None:
        have = store.keys(rows)
        run.finish(sum(all(k in have for k in study.keys(s)) for s in samples), len(samples))
    summary = study.summarise(adapter, samples, rows, out, shard)
    if out is not None and summary is not None and shard.main:
        study.publish(RunFolder(out), summary, samples)
    return Outcome(rows, summary, store)


def _work_through(
    study: Study,
    adapter: ChatAdapter,
    samples: list[Sample],
    store: RowStore,
    shard: Shard,
    on_progress: Callable[[int], None] | None,
) -> None:
    """This process's batches: the rows not done yet, appended as produced."""
    done = store.done()
    mine = shard.batches(samples, study.batch_size)
    if on_progress is not None:
        on_progress(sum(k in done for batch in mine for s in batch for k in study.keys(s)))
    with study.session(adapter, samples) as work:
        for batch in mine:
            todo = [s for s in batch if any(k not in done for k in study.keys(s))]
            if not todo:
                continue
            for rows, count in work(todo, done):
                store.append(rows)
                if on_progress is not None:
                    on_progress(count)


def share(samples: Sequence[Sample], batch_size: int, shard: Shard | None = None) -> int:
    """How many of `samples` this process works on (for its progress bar)."""
    return sum(len(batch) for batch in (shard or current_shard()).batches(samples, batch_size))


class JsonRows:
    """Rows as JSON objects, one per key: appended to a JSONL file as produced (a `RowLog`), or kept in
    memory when the run has no file. `check` sees the rows read back before a run resumes them."""

    def __init__(
        self,
        path: Path | None,
        key: Callable[[dict[str, Any]], Hashable],
        order: Callable[[dict[str, Any]], Any],
        shard: Shard,
        check: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.key, self.order, self.check = key, order, check
        self.log = RowLog(path, key, shard) if path is not None else None
        self.kept: list[dict[str, Any]] = []

    def done(self) -> set[Hashable]:
        rows = self.log.read() if self.log is not None else []
        if self.check is not None:
            self.check(rows)
        return {self.key(r) for r in rows}

    def append(self, rows: list[dict[str, Any]]) -> None:
        if self.log is not None:
            self.log.append(rows)
        else:
            self.kept.extend(rows)

    def merge(self) -> list[dict[str, Any]]:
        return self.log.merge(self.order) if self.log is not None else sorted(self.kept, key=self.order)

    def keys(self, rows: list[dict[str, Any]]) -> set[Hashable]:
        return {self.key(r) for r in rows}

    def only(self, rows: list[dict[str, Any]], ids: set[str]) -> list[dict[str, Any]]:
        return [r for r in rows if r["id"] in ids]

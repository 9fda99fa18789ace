"""A scoring run's rows as parquet parts (and its maps as safetensors parts), the RowStore of `score`.

Each batch is written as a part of its own (temp file + rename), tagged with the process's rank, its maps
first, so a sample with results always has its maps. An interrupted run loses at most the batches in
flight; a rerun skips the samples already there. At the end the main process merges the parts into
part-merged.parquet in dataset order (written whole, then the parts it replaces removed, then renamed
into place: an interrupted merge is finished on the next run).
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors.torch import save_file

from corehead.experiments.runs import Shard
from corehead.experiments.score_batch import ScoredBatch
from corehead.experiments.study import Position
from corehead.runfolder import RunFolder

MERGED, MERGING = "part-merged.parquet", ".merging.tmp"


class ParquetParts:
    """The parts of one run folder's results/ and maps/; keys are sample ids."""

    def __init__(self, out: Path, shard: Shard, position: Position) -> None:
        self.folder, self.shard, self.position = RunFolder(out), shard, position
        self.results = self.folder.results
        self.part = 0

    def done(self) -> set[Hashable]:
        self.results.mkdir(exist_ok=True)
        self.shard.wait()
        if self.shard.main:
            self._finish_merge()
        self.shard.wait()
        parts = sorted(self.results.glob("part-*.parquet"))
        done = {sid for p in parts for sid in pq.read_table(p, columns=["sample_id"]).column(0).unique().to_pylist()}
        self.part = self._next_part()
        return done

    def _next_part(self) -> int:
        """The first part number of this rank not used yet by a results part or a maps file."""
        used = [p.name.split(".")[0].rsplit("-", 1)[1] for p in self.folder.path.glob(f"*/part-{self.shard.tag}-*")]
        return 1 + max((int(u) for u in used if u.isdigit()), default=-1)

    def append(self, rows: ScoredBatch) -> None:
        name = f"part-{self.shard.tag}-{self.part:05d}"
        if rows.maps:  # before the results part: a sample with results always has its maps
            self.folder.maps.mkdir(exist_ok=True)
            save_file(rows.maps, str(self.folder.maps / f"{name}.safetensors"))
        tmp = self.results / f".{name}.tmp"
        pq.write_table(rows.table, tmp)
        tmp.rename(self.results / f"{name}.parquet")
        self.part += 1

    def merge(self) -> pa.Table:
        self.shard.wait()
        if self.shard.main:
            self._finish_merge()
            parts = sorted(self.results.glob("part-*.parquet"))
            if len(parts) > 1 or (parts and parts[0].name != MERGED):
                table = pa.concat_tables([pq.read_table(p) for p in parts])
                ids = table.column("sample_id").to_pylist()
                order = sorted(range(len(ids)), key=lambda i: self.position(ids[i]))  # stable: rows keep their order
                pq.write_table(table.take(order), self.results / MERGING)
                self._finish_merge()
        self.shard.wait()
        return pq.read_table(self.results)

    def _finish_merge(self) -> None:
        """Complete a merge whose file was written: drop the parts it holds, move it into place."""
        if (self.results / MERGING).exists():
            for part in self.results.glob("part-*.parquet"):
                part.unlink()
            (self.results / MERGING).rename(self.results / MERGED)

    def keys(self, rows: pa.Table) -> set[Hashable]:
        return set(rows.column("sample_id").to_pylist())

    def only(self, rows: pa.Table, ids: set[str]) -> pa.Table:
        return rows.filter(pc.is_in(rows.column("sample_id"), value_set=pa.array(sorted(ids))))

"""Score every decoder head by RAM over a dataset; results are written as they are produced, and resumable.

RUN/results/ holds one row per (sample, layer, head, query group) with every statistic of metrics/ram.py
and `unit_mass`, the attention mass on each of the sample's units (image, page or frame), written batch by
batch as parquet parts and merged in dataset order at the end, the same for any batch size or number of
processes (experiments/parts.py). RUN/manifest.json says what was run and how far it got. With `maps` = N,
RUN/maps/part-*.safetensors keeps the first N samples' per-token attention maps, token cells and
(downscaled) pictures for the report (RunFolder.load_maps). At the end the manifest gets `region_mapping`:
how many evidence and distractor regions were mapped and how many fell back to their best cells. A scoring
run that selects heads also writes RUN/heads.json (or heads-correct.json), which records the scored
samples and the fallback rate, and RUN/heads.png.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corehead.attention.recorder import ROW_GROUPS, decoder_attention
from corehead.data.sample import Sample
from corehead.experiments.evaluate import evaluate
from corehead.experiments.parts import ParquetParts
from corehead.experiments.runs import Shard
from corehead.experiments.score_batch import ScoreOptions, mapping_counts, score_batch
from corehead.experiments.study import Outcome, Position, Study, Work, run_study
from corehead.heads import HeadScores, HeadSet, make_headset, scored_samples, select_heads
from corehead.metrics.ram import STATS
from corehead.models.base import ChatAdapter
from corehead.plots import head_map
from corehead.runfolder import RunFolder

__all__ = ["ScoreOptions", "ScoreRun", "run_rankings", "score", "score_and_select", "score_heads"]


@dataclass
class ScoreRun:
    """Rows of a scoring run, as a table, and how its samples' regions were mapped (MAPPING_KEYS counts)."""

    table: pa.Table
    mapping: dict[str, int]

    @property
    def fallbacks(self) -> int:
        """Evidence regions too small for the overlap threshold, mapped to their best cells instead."""
        return self.mapping["fallbacks"]

    @property
    def fallback_rate(self) -> float:
        """Share of the evidence regions that fell back (NaN for rows that do not record it)."""
        return self.fallbacks / self.mapping["regions"] if self.mapping["regions"] else float("nan")


@dataclass
class ScoreSummary:
    """What a scoring run sums up to: its head set (with a selection) and its region mapping counts."""

    headset: HeadSet | None
    mapping: dict[str, int]


@dataclass(frozen=True)
class Selection:
    """How a scoring run picks its CoRe heads: rank by `metric` on `query` rows, keep a share or a count;
    with `correct_only`, rank on the samples the model answers correctly."""

    query: str = "question"
    metric: str = "ram"
    fraction: float = 0.05
    count: int | None = None
    correct_only: bool = False


@dataclass(frozen=True)
class ScoreStudy(Study):
    """Record RAM statistics of every head on every sample; with a `selection`, sum up to a head set."""

    name: ClassVar[str] = "score"
    dataset: str
    options: ScoreOptions
    batch_size: int
    selection: Selection | None = None
    seed: int | None = None  # the seed the samples were drawn with (recorded, as the head set's provenance)

    def settings(self, adapter: ChatAdapter) -> dict[str, Any]:
        opts = asdict(self.options)
        opts.pop("batch_size")  # padding is exact: the batch size does not change a row
        return {"model": adapter.name, "dataset": self.dataset, "options": opts}

    def info(self, adapter: ChatAdapter) -> dict[str, Any]:
        return {
            "family": adapter.family,
            "revision": getattr(adapter.model.config, "_commit_hash", None),
            "stats": list(STATS),
            "query_groups": list(ROW_GROUPS),
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def keys(self, sample: Sample) -> list[Hashable]:
        return [sample.id]

    def store(self, out: Path | None, shard: Shard, position: Position) -> ParquetParts:
        if out is None:
            raise ValueError("a scoring run needs a run folder")
        return ParquetParts(out, shard, position)

    @contextmanager
    def session(self, adapter: ChatAdapter, samples: list[Sample]) -> Iterator[Work]:
        mapped = {s.id for s in samples[: self.options.maps]}

        def work(batch: list[Sample], done: set[Hashable]) -> Iterator[tuple[Any, int]]:
            yield score_batch(adapter, batch, self.options, mapped), len(batch)

        with decoder_attention(adapter.model):
            yield work

    def summarise(
        self, adapter: ChatAdapter, samples: list[Sample], rows: pa.Table, out: Path | None, shard: Shard
    ) -> ScoreSummary:
        """The region mapping counts and, with a selection, the head set (every process computes it; with
        `correct_only`, after answering the samples into RUN/answers.jsonl)."""
        mapping = mapping_counts(rows)
        chosen = self.selection
        if chosen is None or out is None:
            return ScoreSummary(None, mapping)
        only = None
        if chosen.correct_only:  # as Retrieval Head does: only samples the model answers correctly
            answers = RunFolder(out).answers
            result = evaluate(adapter, samples, out=answers, batch_size=self.options.batch_size, shard=shard)
            only = {r["id"] for r in result.rows if r["correct"]}
            if not only:
                raise ValueError(
                    "the model answers none of the samples correctly: nothing to score with --correct-only"
                )
        scores = HeadScores.from_table(rows, metric=chosen.metric, query=chosen.query, only=only)
        selected, selection = select_heads(scores, fraction=chosen.fraction, count=chosen.count)
        headset = make_headset(
            scores,
            selected,
            selection,
            model=adapter.name,
            dataset=self.dataset,
            n_kv_heads=adapter.shape.n_kv_heads,
            revision=getattr(adapter.model.config, "_commit_hash", None),
            options={
                "query": chosen.query,
                "metric": chosen.metric,
                "correct_only": chosen.correct_only,
                **asdict(self.options),
            },
            scored=scored_samples(self.dataset, self.seed, [s.id for s in samples]),
            mapping=mapping,
        )
        return ScoreSummary(headset, mapping)

    def publish(self, folder: RunFolder, summary: ScoreSummary, samples: list[Sample]) -> None:
        """The mapping counts into the manifest; the head set (if any) and its map."""
        _record_mapping(folder, summary.mapping)
        headset = summary.headset
        if headset is None:
            return
        correct_only = self.selection is not None and self.selection.correct_only
        headset.save(folder.heads_correct if correct_only else folder.heads)
        title = f"{headset.metric} per head ({headset.query} rows, {headset.n_samples} samples)"
        head_map(np.asarray(headset.scores["mean"]), headset.selected, title, folder.figure("score"))


def _record_mapping(folder: RunFolder, mapping: dict[str, int]) -> None:
    """Add the run's region mapping counts and fallback rate to its manifest.json (atomically)."""
    rate = mapping["fallbacks"] / mapping["regions"] if mapping["regions"] else None
    manifest = {**folder.manifest(), "region_mapping": {**mapping, "fallback_rate": rate}}
    tmp = folder.manifest_path.with_name(f".{folder.manifest_path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(folder.manifest_path)


def score(
    adapter: ChatAdapter,
    samples: list[Sample],
    out: Path,
    dataset: str,
    options: ScoreOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    shard: Shard | None = None,
) -> ScoreRun:
    """Record RAM statistics for every sample into out/results; returns all rows (old and new).

    Under a distributed launch each process scores its shard (see experiments/runs.py) and the main
    process merges them; every process returns the merged rows.
    """
    options = options or ScoreOptions()
    study = ScoreStudy(dataset, options, options.batch_size)
    return _scored(run_study(study, adapter, samples, out, shard, on_progress))


def _scored(outcome: Outcome) -> ScoreRun:
    """The rows, and their region mapping counts."""
    return ScoreRun(outcome.rows, outcome.summary.mapping)


def run_rankings(run: Path, specs: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Head rankings from a scoring run's results, one per 'metric:query' spec (e.g. 'ram:question',
    'ram_minus_distractor:all'); a bare query group means RAM on it."""
    results = RunFolder(run).results
    if not results.is_dir():
        raise ValueError(f"{run} has no results/ folder: rankings other than heads.json need the scoring run")
    table = pq.read_table(results)
    out = {}
    for spec in specs:
        metric, _, query = spec.rpartition(":")
        metric, query = metric or "ram", query.replace("-", "_")
        out[f"{metric}:{query}"] = HeadScores.from_table(table, metric=metric, query=query).ranking()
    return out


def score_heads(
    adapter: ChatAdapter,
    samples: list[Sample],
    out: Path | None = None,
    metric: str = "ram",
    query: str = "question",
    dataset: str = "custom",
    options: ScoreOptions | None = None,
) -> HeadScores:
    """Score and aggregate in one call: per-head mean `metric` over `samples` with bootstrap CIs.

    Rows go to `out` (resumable) when given, else to a temporary folder.
    """
    if out is not None:
        return HeadScores.from_table(score(adapter, samples, out, dataset, options).table, metric, query)
    with tempfile.TemporaryDirectory(prefix="corehead-score-") as tmp:
        return HeadScores.from_table(score(adapter, samples, Path(tmp), dataset, options).table, metric, query)


def score_and_select(
    adapter: ChatAdapter,
    samples: list[Sample],
    out: Path,
    dataset: str,
    query: str = "question",
    metric: str = "ram",
    fraction: float = 0.05,
    count: int | None = None,
    options: ScoreOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    correct_only: bool = False,
    shard: Shard | None = None,
    seed: int | None = None,
) -> tuple[HeadSet, ScoreRun]:
    """A whole scoring run: record into `out`, rank by `metric` on `query` rows, select, save the head set
    and its map (out/heads.png). `dataset` (the spec) and `seed` (what the samples were drawn with) go into
    the head set's record of its scored samples (`HeadSet.scored`), beside the samples' ids.

    With `correct_only`, heads are ranked on the samples the model answers correctly (answers are kept in
    out/answers.jsonl) and saved as out/heads-correct.json; otherwise out/heads.json. Under a distributed
    launch every process scores its shard and returns the same head set; the main process saves it.
    """
    if query not in (*ROW_GROUPS, "generated"):
        raise ValueError(f"query must be one of {', '.join(ROW_GROUPS)}, generated; got {query!r}")
    options = options or ScoreOptions()
    if query == "generated":
        options = replace(options, generated=True)
    selection = Selection(query, metric, fraction, count, correct_only)
    study = ScoreStudy(dataset, options, options.batch_size, selection, seed)
    outcome = run_study(study, adapter, samples, out, shard, on_progress)
    return outcome.summary.headset, _scored(outcome)

"""Head scores and head sets: ranking, selection, the versioned HeadSet file and peers' formats.

HeadSet JSON (schema in docs/headset.md): what was scored (model, revision, dataset, metric, query group,
options; the scored sample ids and their digest; how many regions fell back), per-head statistics with bootstrap CIs, the ranking, the selected CoRe heads, KV-head scores
(max and sum over each GQA group) and the per-layer profile. Exports: Retrieval-Head `{"l-h": [score]}`
JSON and DuoAttention `full_attention_heads.tsv` (layers x KV heads, 1 = keep full attention).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corehead.metrics.agreement import rank_agreement
from corehead.metrics.stats import bootstrap_mean_ci
from corehead.runfolder import RunFolder

FORMAT = "corehead.headset"
VERSION = 1
# how a scoring run's regions were mapped to tokens: evidence regions, those that fell back to their
# best-overlapping cells, and the same for distractor regions
MAPPING_KEYS = ("regions", "fallbacks", "distractor_regions", "distractor_fallbacks")


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 hex of the sorted ids joined by newlines: names a set of samples in manifests and head sets."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def scored_samples(dataset: str, seed: int | None, ids: list[str]) -> dict[str, Any]:
    """A head set's record of what it was scored on: dataset spec, seed, the sample ids (sorted) and their
    digest (`ids_digest`, so runs can be compared without the id lists)."""
    ordered = sorted(ids)
    return {"dataset": dataset, "seed": seed, "n": len(ordered), "ids": ordered, "digest": ids_digest(ordered)}


def sample_grid(
    table: pa.Table, metric: str = "ram", query: str = "question", only: set[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """A scoring run's per-sample values of `metric` on `query` rows: the sample ids (in row order) and a
    [samples, layers, heads] grid; `only` keeps those ids."""
    if metric not in table.column_names:
        raise ValueError(f"unknown metric {metric!r}; the results hold {', '.join(table.column_names[5:])}")
    rows = table.filter(pa.compute.equal(table.column("query"), query))
    if only is not None:
        rows = rows.filter(pa.compute.is_in(rows.column("sample_id"), value_set=pa.array(sorted(only))))
    if rows.num_rows == 0:
        raise ValueError(f"no rows for query group {query!r}" + (" among the chosen samples" if only else ""))
    ids = rows.column("sample_id").to_numpy(zero_copy_only=False)
    layers = rows.column("layer").to_numpy().astype(int)
    heads = rows.column("head").to_numpy().astype(int)
    values = rows.column(metric).to_numpy()
    order = {str(sid): i for i, sid in enumerate(dict.fromkeys(ids))}
    grid = np.full((len(order), layers.max() + 1, heads.max() + 1), np.nan)
    grid[[order[str(s)] for s in ids], layers, heads] = values
    return list(order), grid


@dataclass
class HeadScores:
    """Per-head dataset means [layers, heads] with 95% bootstrap intervals, for one metric and query group."""

    metric: str
    query: str
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_samples: int

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        metric: str = "ram",
        query: str = "question",
        seed: int = 0,
        only: set[str] | None = None,
    ) -> HeadScores:
        """Aggregate a scoring run's rows (one per sample, layer, head, query group); `only` keeps those ids."""
        _, grid = sample_grid(table, metric, query, only)
        mean, low, high = bootstrap_mean_ci(grid, seed=seed)
        return cls(metric, query, mean, low, high, len(grid))

    def ranking(self) -> list[tuple[int, int]]:
        """(layer, head) from the highest mean score down."""
        flat = np.argsort(-self.mean, axis=None, kind="stable")
        return [(int(i // self.mean.shape[1]), int(i % self.mean.shape[1])) for i in flat]


@dataclass
class HeadSet:
    """A ranked selection of heads, with what produced it; saved as versioned JSON."""

    model: str
    dataset: str
    metric: str
    query: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ranking: list[tuple[int, int]]
    scores: dict[str, list[list[float]]]  # mean / low / high, [layers][heads]
    selected: list[tuple[int, int]]
    selection: dict[str, Any]
    revision: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 0
    # provenance: what was scored (`scored_samples`) and how its regions were mapped to tokens
    scored: dict[str, Any] = field(default_factory=dict)  # {} in files that predate it: overlap unknown
    fallbacks: int = 0  # evidence regions that fell back to their best-overlapping cells
    regions: int = 0  # evidence regions mapped (0 in files that predate it)
    distractor_fallbacks: int = 0
    distractor_regions: int = 0

    @property
    def fallback_rate(self) -> float:
        """Share of the mapped evidence regions that fell back to their best cells (NaN when not recorded)."""
        return self.fallbacks / self.regions if self.regions else float("nan")

    @property
    def groups(self) -> int:
        """Query heads per KV head (GQA): query head h reads KV head h // groups."""
        return self.n_heads // self.n_kv_heads

    def kv_scores(self, how: str = "max") -> np.ndarray:
        """[layers, kv_heads]: the max (or sum) of the query heads' scores in each GQA group."""
        mean = np.asarray(self.scores["mean"]).reshape(self.n_layers, self.n_kv_heads, self.groups)
        if how == "max":
            return mean.max(-1)
        if how == "sum":
            return mean.sum(-1)
        raise ValueError(f"how must be 'max' or 'sum', got {how!r}")

    def layer_profile(self) -> np.ndarray:
        """Mean score per layer."""
        return np.asarray(self.scores["mean"]).mean(axis=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "revision": self.revision,
            "dataset": self.dataset,
            "metric": self.metric,
            "query": self.query,
            "options": self.options,
            "n_samples": self.n_samples,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "gqa": {"groups": self.groups, "kv_head_of": "query head h reads KV head h // groups"},
            "scores": self.scores,
            "ranking": [list(p) for p in self.ranking],
            "selection": self.selection,
            "selected": [list(p) for p in self.selected],
            "kv_scores": {"max": self.kv_scores("max").tolist(), "sum": self.kv_scores("sum").tolist()},
            "layer_profile": self.layer_profile().tolist(),
            "scored": self.scored,
            "fallbacks": self.fallbacks,
            "regions": self.regions,
            "fallback_rate": self.fallbacks / self.regions if self.regions else None,
            "distractor_fallbacks": self.distractor_fallbacks,
            "distractor_regions": self.distractor_regions,
        }

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> HeadSet:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a corehead head set (format {data.get('format')!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"{path} has head-set version {data.get('version')}, this corehead reads {VERSION}")
        return cls(
            model=data["model"],
            dataset=data["dataset"],
            metric=data["metric"],
            query=data["query"],
            n_layers=data["n_layers"],
            n_heads=data["n_heads"],
            n_kv_heads=data["n_kv_heads"],
            ranking=[(int(a), int(b)) for a, b in data["ranking"]],
            scores=data["scores"],
            selected=[(int(a), int(b)) for a, b in data["selected"]],
            selection=data["selection"],
            revision=data.get("revision"),
            options=data.get("options", {}),
            n_samples=data.get("n_samples", 0),
            scored=data.get("scored") or {},
            **{key: int(data.get(key) or 0) for key in MAPPING_KEYS},
        )


def select_heads(
    scores: HeadScores,
    fraction: float | None = 0.05,
    count: int | None = None,
    threshold: float | None = None,
) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """The CoRe heads: the top `count`, else those scoring >= `threshold`, else the top `fraction` (>= 1 head)."""
    ranking = scores.ranking()
    if count is not None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        return ranking[:count], {"count": count}
    if threshold is not None:
        return [p for p in ranking if scores.mean[p] >= threshold], {"threshold": threshold}
    if fraction is None or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = max(1, round(fraction * len(ranking)))
    return ranking[:n], {"fraction": fraction}


def make_headset(
    scores: HeadScores,
    selected: list[tuple[int, int]],
    selection: dict[str, Any],
    model: str,
    dataset: str,
    n_kv_heads: int,
    revision: str | None = None,
    options: dict[str, Any] | None = None,
    scored: dict[str, Any] | None = None,
    mapping: dict[str, int] | None = None,
) -> HeadSet:
    """The HeadSet of a selection; `scored` (scored_samples) and `mapping` (MAPPING_KEYS counts) record its
    provenance."""
    n_layers, n_heads = scores.mean.shape
    return HeadSet(
        model=model,
        dataset=dataset,
        metric=scores.metric,
        query=scores.query,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ranking=scores.ranking(),
        scores={"mean": scores.mean.tolist(), "low": scores.low.tolist(), "high": scores.high.tolist()},
        selected=selected,
        selection=selection,
        revision=revision,
        options=options or {},
        n_samples=scores.n_samples,
        scored=scored or {},
        **{key: int((mapping or {}).get(key, 0)) for key in MAPPING_KEYS},
    )


def to_retrieval_head(headset: HeadSet) -> dict[str, list[float]]:
    """Retrieval-Head's format: {"layer-head": [score]} for every head."""
    mean = headset.scores["mean"]
    return {f"{layer}-{head}": [float(mean[layer][head])] for layer, head in headset.ranking}


def to_duo_tsv(headset: HeadSet) -> str:
    """DuoAttention's full_attention_heads.tsv: one line per layer, one column per KV head, 1 = full."""
    keep = np.zeros((headset.n_layers, headset.n_kv_heads), dtype=int)
    for layer, head in headset.selected:
        keep[layer, head // headset.groups] = 1
    return "\n".join("\t".join(str(v) for v in row) for row in keep) + "\n"


def overlap(a: HeadSet, b: HeadSet) -> dict[str, float]:
    """How two head sets agree: Jaccard of the selections and Spearman correlation of the full rankings."""
    if (a.n_layers, a.n_heads) != (b.n_layers, b.n_heads):
        raise ValueError("head sets of different architectures cannot be compared")
    sa, sb = set(a.selected), set(b.selected)
    jaccard = len(sa & sb) / max(1, len(sa | sb))
    rank_a = {p: i for i, p in enumerate(a.ranking)}
    rank_b = {p: i for i, p in enumerate(b.ranking)}
    x = np.array([rank_a[p] for p in a.ranking], dtype=float)
    y = np.array([rank_b[p] for p in a.ranking], dtype=float)
    spearman = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 else 1.0
    return {"jaccard": jaccard, "spearman": spearman, "shared": float(len(sa & sb))}


def from_retrieval_head(data: dict[str, list[float]], n_kv_heads: int, fraction: float = 0.05, **meta: Any) -> HeadSet:
    """A HeadSet from Retrieval-Head's {"layer-head": [scores]} (the mean of each list is the head's score)."""
    pairs = {tuple(int(v) for v in key.split("-")): float(np.mean(vals)) for key, vals in data.items()}
    n_layers = max(p[0] for p in pairs) + 1
    n_heads = max(p[1] for p in pairs) + 1
    mean = np.zeros((n_layers, n_heads))
    for (layer, head), value in pairs.items():
        mean[layer, head] = value
    scores = HeadScores("retrieval_head", "imported", mean, mean.copy(), mean.copy(), 0)
    selected, selection = select_heads(scores, fraction=fraction)
    return make_headset(scores, selected, selection, meta.get("model", "?"), meta.get("dataset", "?"), n_kv_heads)


def from_duo_tsv(text: str, n_heads: int) -> HeadSet:
    """A HeadSet from DuoAttention's full_attention_heads.tsv: every query head of a full KV head is selected."""
    rows = [[float(v) for v in line.split()] for line in text.strip().splitlines()]
    keep = np.asarray(rows)
    n_kv = keep.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads do not split into {n_kv} KV heads")
    mean = np.repeat(keep, n_heads // n_kv, axis=1)
    scores = HeadScores("duo_attention", "imported", mean, mean.copy(), mean.copy(), 0)
    selected = [p for p in scores.ranking() if mean[p] > 0.5]
    return make_headset(scores, selected, {"threshold": 0.5}, "?", "?", n_kv)


def causal_grid(run: Path) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """A causal run's per-sample head effects: the sample ids, a [samples, layers, heads] grid of the drop
    in the gold answer's log-probability when each head alone is ablated, and the rows' method, mode and
    target (one of each: effects of different methods or modes are not one ranking)."""
    path = RunFolder(Path(run)).rows("attribute")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run} is not a causal run folder (corehead attribute)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} has no rows yet")
    kinds = {(row["method"], row["mode"], row["target"]) for row in rows}
    if len(kinds) > 1:
        mixed = ", ".join("/".join(kind) for kind in sorted(kinds))
        raise ValueError(f"{path} mixes methods or modes ({mixed}): compare one at a time")
    try:
        grid = np.asarray([row["effects"] for row in rows], dtype=float)
    except ValueError:
        grid = np.empty(0)
    if grid.ndim != 3:
        raise ValueError(f"{path}: the rows' effects are not [layers][heads] grids of one shape")
    method, mode, target = kinds.pop()
    return [str(row["id"]) for row in rows], grid, {"method": method, "mode": mode, "target": target}


def _shared_samples(first: Path, second: Path) -> int | None:
    """How many samples two runs' heads.json both record as scored (None when either does not record them)."""
    paths = [RunFolder(run).heads for run in (first, second)]
    if not all(path.exists() for path in paths):
        return None
    a, b = (set(HeadSet.load(path).scored.get("ids") or ()) for path in paths)
    return len(a & b) if a and b else None


def compare_rankings(
    ram_run: Path, causal_run: Path, fraction: float = 0.05, draws: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """How well each RAM ranking of a scoring run (`ram:<group>` and `ram_minus_distractor:<group>` for each
    query group in its results) predicts a causal run's head effects: one row of `rank_agreement` numbers
    per ranking, plus `overlap`, the samples both runs scored, when both heads.json record them (the two
    should be held out from each other; this reports, it does not refuse)."""
    _, causal, _ = causal_grid(causal_run)
    results = RunFolder(Path(ram_run)).results
    if not results.is_dir():
        raise FileNotFoundError(f"{ram_run} has no results/ folder: not a scoring run (corehead score)")
    table = pq.read_table(results)
    metrics = [m for m in ("ram", "ram_minus_distractor") if m in table.column_names]
    shared = _shared_samples(Path(ram_run), Path(causal_run))
    rows = []
    for group in pa.compute.unique(table.column("query")).to_pylist():
        for metric in metrics:
            _, grid = sample_grid(table, metric, group)
            agreement = rank_agreement(grid, causal, fraction, draws, seed)
            row = {"ranking": f"{metric}:{group}", **asdict(agreement)}
            rows.append(row if shared is None else row | {"overlap": shared})
    return rows

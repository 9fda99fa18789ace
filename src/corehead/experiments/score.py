"""Score every decoder head by RAM over a dataset; results are written as they are produced, and resumable.

RUN/results/ holds one row per (sample, layer, head, query group) with every statistic of metrics/ram.py
and `unit_mass`, the attention mass on each of the sample's units (image, page or frame). Each batch is
written as a part of its own (temp file + rename), so an interrupted run loses at most the batches in
flight and a rerun skips the samples already there; at the end the parts are merged into
part-merged.parquet in dataset order, the same for any batch size or number of processes
(experiments/runs.py). RUN/manifest.json says what was run and how far it got. With `maps` = N, RUN/maps/
part-*.safetensors keeps the first N samples' per-token attention maps, token cells and (downscaled)
pictures for the report.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from corehead.attention.recorder import ROW_GROUPS, decoder_attention, plan_rows, record
from corehead.data.sample import Sample, SampleError
from corehead.experiments.evaluate import evaluate
from corehead.experiments.runs import Run, Shard, current_shard, dataset_order
from corehead.heads import HeadScores, HeadSet, make_headset, select_heads
from corehead.metrics.ram import STATS
from corehead.models.base import ChatAdapter, sample_region_tokens

MAP_PICTURE = 384  # px on the longer side of the pictures kept with maps
MERGED, MERGING = "part-merged.parquet", ".merging.tmp"


@dataclass
class ScoreOptions:
    """How samples are scored; saved in the manifest, and a rerun into the same folder must match."""

    min_overlap: float = 0.5  # share of a cell inside the region for its token to count
    batch_size: int = 4
    answer: bool = True  # teacher-force the gold answer so its rows can be recorded
    generated: bool = False  # instead, generate an answer and record its tokens' rows ('generated' group)
    max_new_tokens: int = 16
    maps: int = 0  # keep every head's map over the visual tokens for the first `maps` samples (see load_maps)


@dataclass
class ScoreRun:
    """Rows of a scoring run, as a table, and the fallbacks counted while mapping regions."""

    table: pa.Table
    fallbacks: int


def _settings(adapter: ChatAdapter, dataset: str, options: ScoreOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the rows depend on (a rerun must match), and what the manifest only records."""
    opts = asdict(options)
    batch_size = opts.pop("batch_size")  # padding is exact: the batch size does not change a row
    settings = {"model": adapter.name, "dataset": dataset, "options": opts}
    info = {
        "family": adapter.family,
        "revision": getattr(adapter.model.config, "_commit_hash", None),
        "stats": list(STATS),
        "query_groups": list(ROW_GROUPS),
        "batch_size": batch_size,
    }
    return settings, info


def _done_ids(results: Path) -> set[str]:
    parts = sorted(results.glob("part-*.parquet"))
    return {sid for p in parts for sid in pq.read_table(p, columns=["sample_id"]).column(0).unique().to_pylist()}


def _next_part(out: Path, tag: str) -> int:
    """The first part number of rank `tag` not used yet by a results part or a maps file."""
    used = [p.name.split(".")[0].rsplit("-", 1)[1] for p in out.glob(f"*/part-{tag}-*")]
    return 1 + max((int(u) for u in used if u.isdigit()), default=-1)


def _merge(results: Path, samples: list[Sample], shard: Shard) -> pa.Table:
    """Main process: every rank's parts into one part in dataset order (atomically: written whole, then the
    parts it replaces removed, then renamed into place; an interrupted merge is finished on the next run).
    Every rank returns the merged table."""
    shard.wait()
    if shard.main:
        _finish_merge(results)
        parts = sorted(results.glob("part-*.parquet"))
        if len(parts) > 1 or (parts and parts[0].name != MERGED):
            table = pa.concat_tables([pq.read_table(p) for p in parts])
            ids, key = table.column("sample_id").to_pylist(), dataset_order(samples)
            order = sorted(range(len(ids)), key=lambda i: key(ids[i]))  # stable: a sample's rows keep their order
            pq.write_table(table.take(order), results / MERGING)
            _finish_merge(results)
    shard.wait()
    return pq.read_table(results)


def _finish_merge(results: Path) -> None:
    """Complete a merge whose file was written: drop the parts it holds, move it into place."""
    if (results / MERGING).exists():
        for part in results.glob("part-*.parquet"):
            part.unlink()
        (results / MERGING).rename(results / MERGED)


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
    shard = shard or current_shard()
    settings, info = _settings(adapter, dataset, options)
    run = Run(out, "score", settings, shard, info)
    results = out / "results"
    results.mkdir(exist_ok=True)
    shard.wait()
    if shard.main:
        _finish_merge(results)
    shard.wait()
    done = _done_ids(results)
    mine = shard.batches(samples, options.batch_size)
    mapped = {s.id for s in samples[: options.maps]}
    if on_progress is not None:
        on_progress(sum(s.id in done for batch in mine for s in batch))
    part = _next_part(out, shard.tag)
    fallbacks = 0
    with decoder_attention(adapter.model):
        for batch in mine:
            chunk = [s for s in batch if s.id not in done]
            if not chunk:
                continue
            table, fell_back, maps = _score_batch(adapter, chunk, options, mapped)
            fallbacks += fell_back
            name = f"part-{shard.tag}-{part:05d}"
            if maps:  # before the results part: a sample with results always has its maps
                (out / "maps").mkdir(exist_ok=True)
                save_file(maps, str(out / "maps" / f"{name}.safetensors"))
            tmp = results / f".{name}.tmp"
            pq.write_table(table, tmp)
            tmp.rename(results / f"{name}.parquet")
            part += 1
            if on_progress is not None:
                on_progress(len(chunk))
    table = _merge(results, samples, shard)
    wanted = {s.id for s in samples}
    mask = pa.compute.is_in(table.column("sample_id"), value_set=pa.array(sorted(wanted)))
    table = table.filter(mask)
    run.finish(len(set(table.column("sample_id").to_pylist())), len(samples))
    return ScoreRun(table, fallbacks)


def load_maps(out: Path, sample_id: str) -> dict[str, np.ndarray]:
    """One sample's maps from a run scored with `maps`: `attention` [layers, heads, groups, N] (mass on each
    visual token per query group of ROW_GROUPS), `cells` [N, 4] (pixels in its unit), `units` and `spans`
    [N] (first unit covered, how many), `region` and `distractors` [N] bool, `sizes` [units, 2] (width,
    height of each unit) and `image0`, `image1`, ... (each unit's picture, uint8 [h, w, 3], at most
    MAP_PICTURE px on a side)."""
    for path in sorted((out / "maps").glob("part-*.safetensors")):
        with safe_open(str(path), framework="numpy") as f:
            keys = [k for k in f.keys() if k.rsplit("/", 1)[0] == sample_id]  # noqa: SIM118 (not a dict)
            if keys:
                return {k.rsplit("/", 1)[1]: f.get_tensor(k) for k in keys}
    raise KeyError(f"no maps for sample {sample_id!r} in {out}/maps (score with --maps N)")


def _score_batch(
    adapter: ChatAdapter, samples: list[Sample], options: ScoreOptions, mapped: set[str]
) -> tuple[pa.Table, int, dict[str, torch.Tensor]]:
    for s in samples:
        if not s.regions:
            raise SampleError(s.id, "regions", "RAM needs an evidence region; this sample has none (eval it instead)")
    encoded = [adapter.encode(s, answer=options.answer and not options.generated) for s in samples]
    batch = adapter.collate(encoded)
    width = int(batch["input_ids"].shape[1])
    regions, dists, fallbacks = [], [], 0
    for s, e in zip(samples, encoded, strict=True):
        r = sample_region_tokens(s, e.token_map, min_overlap=options.min_overlap)
        regions.append(r.indices)
        fallbacks += r.fallbacks
        d = sample_region_tokens(s, e.token_map, s.distractors, options.min_overlap) if s.distractors else None
        dists.append(d.indices if d is not None else np.zeros(0, dtype=np.int64))
    plan = plan_rows(encoded, width, regions, dists, [len(s.distractors) for s in samples])
    device = adapter.model.device
    inputs = {k: v.to(device) for k, v in batch.items()}
    plan.keep_maps = any(s.id in mapped for s in samples)
    groups = list(ROW_GROUPS)
    with torch.no_grad(), record(plan):
        if options.generated:
            plan.record_decode = True
            new = adapter.model.generate(
                **inputs,
                max_new_tokens=options.max_new_tokens,
                do_sample=False,
                eos_token_id=adapter.end_token,
                pad_token_id=adapter.pad_token,
            )[:, width:]
        else:
            adapter.model(**inputs)
    stats = torch.stack([plan.stats[layer].cpu() for layer in sorted(plan.stats)], dim=1)  # [B, L, H, G, S]
    if options.generated:
        stats = torch.cat([stats, _generated_stats(plan, new.cpu(), adapter.end_token)[:, :, :, None]], dim=3)
        groups.append("generated")
    b, n_layers, n_heads, n_groups, _ = stats.shape
    idx = np.indices((b, n_layers, n_heads, n_groups)).reshape(4, -1)
    columns: dict[str, Any] = {
        "sample_id": [samples[i].id for i in idx[0]],
        "domain": [samples[i].domain for i in idx[0]],
        "layer": idx[1].astype(np.int16),
        "head": idx[2].astype(np.int16),
        "query": [groups[g] for g in idx[3]],
    }
    flat = stats[..., : len(STATS)].reshape(-1, len(STATS)).numpy()
    for k, name in enumerate(STATS):
        columns[name] = flat[:, k].astype(np.float32)
    units = stats[..., len(STATS) :].reshape(len(idx[0]), -1).numpy().astype(np.float32)
    columns["unit_mass"] = [units[r, : len(samples[b].units)] for r, b in enumerate(idx[0])]
    maps: dict[str, torch.Tensor] = {}
    if plan.keep_maps:
        attention = torch.stack([plan.maps[layer] for layer in sorted(plan.maps)], dim=1)  # [B, L, H, G, N]
        for b, (s, e) in enumerate(zip(samples, encoded, strict=True)):
            if s.id not in mapped:
                continue
            n = len(e.token_map)
            maps[f"{s.id}/spans"] = torch.from_numpy(e.token_map.spans.astype(np.int64))
            maps[f"{s.id}/sizes"] = torch.tensor([[u.width, u.height] for u in s.units], dtype=torch.int64)
            for k, unit in enumerate(s.units):
                picture = unit.load()
                picture.thumbnail((MAP_PICTURE, MAP_PICTURE))
                maps[f"{s.id}/image{k}"] = torch.from_numpy(np.asarray(picture, dtype=np.uint8).copy())
            maps[f"{s.id}/attention"] = attention[b, ..., :n].to(torch.float16).contiguous()
            maps[f"{s.id}/cells"] = torch.from_numpy(e.token_map.cells.astype(np.float32))
            maps[f"{s.id}/units"] = torch.from_numpy(e.token_map.units.astype(np.int64))
            maps[f"{s.id}/region"] = plan.region[b, :n].clone()
            maps[f"{s.id}/distractors"] = plan.distractors[b, :n].clone()
    return pa.table(columns), fallbacks, maps


def _generated_stats(plan: Any, new_tokens: torch.Tensor, end_token: int) -> torch.Tensor:
    """[B, L, H, S]: statistics averaged over the rows of each sample's generated answer tokens.

    Decode step t reads the token generated at step t - 1; a sample's rows end at its end-of-turn token.
    Samples whose answer is empty get NaN (left out of dataset means).
    """
    if not plan.decode:  # one new token: no generated token's row was run
        raise ValueError("recording generated rows needs max_new_tokens >= 2")
    steps = torch.stack([torch.stack([d[k] for k in sorted(d)], dim=1).cpu() for d in plan.decode])  # [T,B,L,H,S]
    ended = (new_tokens == end_token).int().cumsum(1) > 0  # [B, M]: at or after the end token
    answer_len = (~ended).sum(1)  # real answer tokens per sample
    valid = torch.arange(steps.shape[0])[:, None] < answer_len[None, :]  # step t+1 reads token t
    count = valid.sum(0)  # the last token's row is never run when generation stops at max_new_tokens
    weights = valid.float() / count.clamp_min(1)[None, :]
    mean = (steps * weights[:, :, None, None, None]).sum(0)
    mean[count == 0] = float("nan")
    return mean


def run_rankings(run: Path, specs: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Head rankings from a scoring run's results, one per 'metric:query' spec (e.g. 'ram:question',
    'ram_minus_distractor:all'); a bare query group means RAM on it."""
    if not (run / "results").is_dir():
        raise ValueError(f"{run} has no results/ folder: rankings other than heads.json need the scoring run")
    table = pq.read_table(run / "results")
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
    query: str = "all",
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
    query: str = "all",
    metric: str = "ram",
    fraction: float = 0.05,
    count: int | None = None,
    options: ScoreOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
    correct_only: bool = False,
    shard: Shard | None = None,
) -> tuple[HeadSet, ScoreRun]:
    """A whole scoring run: record into `out`, rank by `metric` on `query` rows, select, save the head set.

    With `correct_only`, heads are ranked on the samples the model answers correctly (answers are kept in
    out/answers.jsonl) and saved as out/heads-correct.json; otherwise out/heads.json. Under a distributed
    launch every process scores its shard and returns the same head set; the main process saves it.
    """
    if query not in (*ROW_GROUPS, "generated"):
        raise ValueError(f"query must be one of {', '.join(ROW_GROUPS)}, generated; got {query!r}")
    options = options or ScoreOptions()
    if query == "generated":
        options = replace(options, generated=True)
    shard = shard or current_shard()
    run = score(adapter, samples, out, dataset, options, on_progress, shard)
    only = None
    if correct_only:  # as Retrieval Head does: only samples the model answers correctly
        answers = evaluate(adapter, samples, out=out / "answers.jsonl", batch_size=options.batch_size, shard=shard)
        only = {r["id"] for r in answers.rows if r["correct"]}
        if not only:
            raise ValueError("the model answers none of the samples correctly: nothing to score with --correct-only")
    scores = HeadScores.from_table(run.table, metric=metric, query=query, only=only)
    selected, selection = select_heads(scores, fraction=fraction, count=count)
    text = adapter.model.config.get_text_config()
    headset = make_headset(
        scores,
        selected,
        selection,
        model=adapter.name,
        dataset=dataset,
        n_kv_heads=int(text.num_key_value_heads),
        revision=getattr(adapter.model.config, "_commit_hash", None),
        options={"query": query, "metric": metric, "correct_only": correct_only, **asdict(options)},
    )
    if shard.main:
        headset.save(out / ("heads-correct.json" if correct_only else "heads.json"))
    return headset, run

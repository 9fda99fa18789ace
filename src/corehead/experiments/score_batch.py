"""One batch of a scoring run: record every head's RAM statistics, as rows of a table, and maps to keep.

Rows: one per (sample, layer, head, query group) with every statistic of metrics/ram.py, `unit_mass` (the
attention mass on each of the sample's units) and the sample's MAPPING_KEYS counts (its evidence and distractor
regions, and how many of each fell back to their best cells). Maps (the first samples of a run scored with `maps`):
every head's mass on each visual token, the tokens' cells and the units' pictures, for the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from corehead.attention.recorder import ROW_GROUPS, RowPlan, plan_rows, record
from corehead.data.sample import Sample, SampleError
from corehead.heads import MAPPING_KEYS
from corehead.metrics.ram import STATS
from corehead.models.base import ChatAdapter, Encoded
from corehead.models.regions import WEIGHTINGS, distractor_weights, region_weights

MAP_PICTURE = 384  # px on the longer side of the pictures kept with maps


@dataclass
class ScoreOptions:
    """How samples are scored; saved in the manifest, and a rerun into the same folder must match."""

    min_overlap: float = 0.5  # share of a cell inside the region for its token to count (binary weighting)
    region_weighting: str = "binary"  # or "fractional": each token weighted by its cell's share in the box
    batch_size: int = 4
    answer: bool = True  # teacher-force the gold answer so its rows can be recorded
    generated: bool = False  # instead, generate an answer and record its tokens' rows ('generated' group)
    max_new_tokens: int = 16
    maps: int = 0  # keep every head's map over the visual tokens for the first `maps` samples (RunFolder.load_maps)

    def __post_init__(self) -> None:
        if self.region_weighting not in WEIGHTINGS:
            raise ValueError(f"region weighting must be one of {', '.join(WEIGHTINGS)}, got {self.region_weighting!r}")
        if not 0 < self.min_overlap <= 1:
            raise ValueError(f"min_overlap is a share of a cell, in (0, 1]; got {self.min_overlap}")


@dataclass
class ScoredBatch:
    """A batch's rows and the maps kept for its samples (safetensors keys 'ID/name')."""

    table: pa.Table
    maps: dict[str, torch.Tensor]


def score_batch(adapter: ChatAdapter, samples: list[Sample], options: ScoreOptions, mapped: set[str]) -> ScoredBatch:
    """Record `samples` in one forward (teacher-forced with the gold answer), or over a greedy generation
    whose answer tokens' rows form the 'generated' group; keep the maps of the samples in `mapped`."""
    for s in samples:
        if not s.regions:
            raise SampleError.of(s, "regions", "RAM needs an evidence region; this sample has none (eval it instead)")
    encoded = [adapter.encode(s, answer=options.answer and not options.generated) for s in samples]
    batch = adapter.collate(encoded)
    plan, mapping = _plan(samples, encoded, int(batch["input_ids"].shape[1]), options)
    plan.keep_maps = any(s.id in mapped for s in samples)
    inputs = {k: v.to(adapter.model.device) for k, v in batch.items()}
    groups = list(ROW_GROUPS)
    with torch.no_grad(), record(plan):
        if options.generated:
            plan.record_decode = True
            new = adapter.generate_ids(inputs, options.max_new_tokens)
        else:
            adapter.model(**inputs)
    stats = torch.stack([plan.stats[layer].cpu() for layer in sorted(plan.stats)], dim=1)  # [B, L, H, G, S]
    if options.generated:
        stats = torch.cat([stats, _generated_stats(plan, new.cpu(), adapter.end_token)[:, :, :, None]], dim=3)
        groups.append("generated")
    maps = _maps(samples, encoded, plan, mapped) if plan.keep_maps else {}
    return ScoredBatch(_table(samples, stats, groups, mapping), maps)


def _plan(
    samples: list[Sample], encoded: list[Encoded], width: int, options: ScoreOptions
) -> tuple[RowPlan, np.ndarray]:
    """The rows to record and the region / distractor weights of each sample; per sample, the MAPPING_KEYS counts."""
    regions, dists, mapping = [], [], []
    how = (options.min_overlap, options.region_weighting)
    for s, e in zip(samples, encoded, strict=True):
        r = region_weights(s, e.token_map, *how)
        d = distractor_weights(s, e.token_map, *how)
        regions.append(r.weights)
        dists.append(d.weights)
        mapping.append([r.regions, r.fallbacks, d.regions, d.fallbacks])  # in MAPPING_KEYS order
    return plan_rows(encoded, width, regions, dists), np.asarray(mapping, dtype=np.int32)


def _table(samples: list[Sample], stats: torch.Tensor, groups: list[str], mapping: np.ndarray) -> pa.Table:
    """stats [B, L, H, G, S + U] as rows (sample, layer, head, query group) with each statistic, unit_mass and
    the sample's MAPPING_KEYS counts."""
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
    for k, name in enumerate(MAPPING_KEYS):
        columns[name] = mapping[idx[0], k]
    return pa.table(columns)


def mapping_counts(table: pa.Table) -> dict[str, int]:
    """The MAPPING_KEYS counts summed over the samples of a scoring run's rows (0 for runs that predate them)."""
    if MAPPING_KEYS[0] not in table.column_names:
        return dict.fromkeys(MAPPING_KEYS, 0)
    ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    return {name: int(table.column(name).to_numpy()[first].sum()) for name in MAPPING_KEYS}


def _maps(samples: list[Sample], encoded: list[Encoded], plan: RowPlan, mapped: set[str]) -> dict[str, torch.Tensor]:
    """The maps of the batch's samples in `mapped` (see RunFolder.load_maps for what each holds)."""
    attention = torch.stack([plan.maps[layer] for layer in sorted(plan.maps)], dim=1)  # [B, L, H, G, N]
    maps: dict[str, torch.Tensor] = {}
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
        maps[f"{s.id}/region"] = plan.region[b, :n] > 0
        maps[f"{s.id}/distractors"] = plan.distractors[b, :n] > 0
    return maps


def _generated_stats(plan: RowPlan, new_tokens: torch.Tensor, end_token: int) -> torch.Tensor:
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

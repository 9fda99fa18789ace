"""How well one head ranking predicts another (RAM against causal effects), with bootstrap intervals.

Both inputs are per-sample grids [samples, layers, heads] from different, held-out samples; each statistic
is computed on the per-head means. A bootstrap draw resamples each grid's samples independently (as
counts per sample, so a draw's means are one matrix product) and recomputes every statistic.
- spearman: rank correlation of the two sets of means over all heads (average ranks for ties);
- precision: |top-k of one ∩ top-k of the other| / k, k = max(1, round(fraction * heads));
- recall: share of the causally needed heads (per-head 95% bootstrap CI above 0) in the first's top-k.
  The needed set is fixed on the full causal data (redrawing it would need a nested bootstrap), so the
  interval of recall reflects the sampling of the first grid only.
Resampling adds noise to both sets of means, which lowers a correlation: with few samples per head, the
Spearman interval can lie below its point estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from corehead.metrics.stats import bootstrap_mean_ci

STATISTICS = ("spearman", "precision", "recall")


@dataclass(frozen=True)
class Agreement:
    """Point estimates on the full data with 95% percentile bootstrap intervals; k, the number of needed
    heads and how many samples each grid had."""

    spearman: float
    spearman_low: float
    spearman_high: float
    precision: float
    precision_low: float
    precision_high: float
    recall: float
    recall_low: float
    recall_high: float
    k: int
    needed: int
    n_ram: int
    n_causal: int


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties sharing the mean of their positions (as Spearman needs)."""
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    positions = np.broadcast_to(np.arange(n), values.shape)
    starts = np.ones(values.shape, dtype=bool)
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(values.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, positions, n), -1), axis=-1), -1)
    ranks = np.empty(values.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of a and b along the last axis; NaN where either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean(-1, keepdims=True)
    rb -= rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))


def top_mask(values: np.ndarray, k: int) -> np.ndarray:
    """True on the k highest values along the last axis (ties: the lower index first, as HeadScores ranks)."""
    top = np.argsort(-values, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=-1)
    return mask


def _statistics(ram: np.ndarray, causal: np.ndarray, needed: np.ndarray, k: int) -> np.ndarray:
    """[..., 3]: spearman, precision and recall of per-head means ram and causal [..., heads]."""
    top = top_mask(ram, k)
    precision = (top & top_mask(causal, k)).sum(-1) / k
    with np.errstate(invalid="ignore"):
        recall = (top & needed).sum(-1) / needed.sum()  # NaN when no head is needed
    return np.stack([spearman(ram, causal), precision, recall], axis=-1)


def _weighted_means(grid: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[draws, heads]: per-head means of grid [samples, heads] with each sample counted counts [draws,
    samples] times; NaN values are left out (as nanmean does), NaN where a head keeps no value."""
    present = ~np.isnan(grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.where(present, grid, 0.0)) / (counts @ present)


def _resampled(grid: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, heads]: per-head means of `draws` resamples of the samples (rows, drawn with replacement)."""
    n = len(grid)
    return _weighted_means(grid, rng.multinomial(n, np.full(n, 1 / n), size=draws).astype(float))


def _full_means(grid: np.ndarray, name: str) -> np.ndarray:
    """Per-head means [heads] of grid [samples, heads]; a head without any value is an error."""
    means = _weighted_means(grid, np.ones((1, len(grid))))[0]
    missing = int(np.isnan(means).sum())
    if missing:
        raise ValueError(f"{name}: {missing} of {means.size} heads have no value in any sample (all NaN)")
    return means


def _interval(boots: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of bootstrap values, leaving out NaN draws (NaN when none is left)."""
    finite = boots[~np.isnan(boots)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [0.025, 0.975])
    return float(low), float(high)


def rank_agreement(
    ram: np.ndarray, causal: np.ndarray, fraction: float = 0.05, draws: int = 1000, seed: int = 0
) -> Agreement:
    """How well `ram` [n1, layers, heads] predicts `causal` [n2, layers, heads] (per-sample grids of held-out
    samples): Spearman, top-k precision and recall of the needed heads, with bootstrap intervals."""
    if ram.ndim != 3 or ram.shape[1:] != causal.shape[1:] or not len(ram) or not len(causal):
        raise ValueError(
            f"grids must be [samples, layers, heads] alike and non-empty; got {ram.shape} and {causal.shape}"
        )
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    ram_flat, causal_flat = ram.reshape(len(ram), -1), causal.reshape(len(causal), -1)
    ram_mean, causal_mean = _full_means(ram_flat, "RAM grid"), _full_means(causal_flat, "causal grid")
    k = max(1, round(fraction * ram_mean.size))
    needed = bootstrap_mean_ci(causal_flat, n_boot=draws, seed=seed)[1] > 0
    point = _statistics(ram_mean, causal_mean, needed, k)
    rng = np.random.default_rng(seed)
    ram_draws, causal_draws = _resampled(ram_flat, draws, rng), _resampled(causal_flat, draws, rng)
    boots = _statistics(ram_draws, causal_draws, needed, k)
    boots[np.isnan(ram_draws).any(-1) | np.isnan(causal_draws).any(-1)] = np.nan  # a head left without samples
    estimates: dict[str, float] = {}
    for i, name in enumerate(STATISTICS):
        low, high = _interval(boots[:, i])
        estimates |= {name: float(point[i]), f"{name}_low": low, f"{name}_high": high}
    return Agreement(**estimates, k=k, needed=int(needed.sum()), n_ram=len(ram), n_causal=len(causal))

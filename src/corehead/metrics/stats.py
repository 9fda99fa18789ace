"""Statistics over samples: means with bootstrap confidence intervals (over samples, or over samples and
random-control draws), paired permutation tests, Holm-adjusted p-values."""

from __future__ import annotations

import numpy as np


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 and its percentile bootstrap interval, resampling samples (rows) jointly.

    values: [n_samples, ...]; NaN marks a sample without a value there (left out). Returns (mean, low,
    high), each of shape values.shape[1:].
    """
    if len(values) == 0:
        raise ValueError("no samples to average")
    rng = np.random.default_rng(seed)
    mean = np.nanmean(values, axis=0)
    if len(values) == 1:
        return mean, mean.copy(), mean.copy()
    draws = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.stack([np.nanmean(values[d], axis=0) for d in draws])
    alpha = (1 - level) / 2
    return mean, np.nanquantile(boots, alpha, axis=0), np.nanquantile(boots, 1 - alpha, axis=0)


def paired_permutation_p(diffs: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that paired differences have mean 0 (random sign flips of each pair).

    The observed assignment counts as one permutation, so p is never 0. All-zero differences give 1.
    """
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) == 0:
        raise ValueError("no paired differences")
    observed = abs(diffs.mean())
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_perm, len(diffs)))
    extreme = np.abs((signs * diffs).mean(axis=1)) >= observed - 1e-12
    return float((extreme.sum() + 1) / (n_perm + 1))


def samples_and_draws_ci(
    values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float, float]:
    """Mean of values [n_draws, n_samples] (e.g. top minus a random control, per control draw and sample),
    with a percentile bootstrap interval that resamples the samples AND the draws, and the two-sided
    bootstrap p-value of a zero mean (twice the smaller share of resampled means on either side of 0, the
    observed counted once, so p is never 0; p < 1 - level exactly when 0 lies outside the interval, up to
    that count). Returns (mean, low, high, p).

    Sample indices are drawn first, as bootstrap_mean_ci draws them: with all draws equal the interval
    is the sample bootstrap's; with one value per draw (no sample variance) its width is the draws'.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"values must be [n_draws, n_samples] with at least one of each, got {values.shape}")
    n_draws, n = values.shape
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, n, size=(n_boot, n))
    draws = rng.integers(0, n_draws, size=(n_boot, n_draws))
    boots = np.concatenate(
        [
            values[draws[i : i + 64, :, None], samples[i : i + 64, None, :]].mean(axis=(1, 2))
            for i in range(0, n_boot, 64)
        ]
    )
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    below, above = int((boots <= 0).sum()), int((boots >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (n_boot + 1))
    return float(values.mean()), float(low), float(high), p


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of a family of tests, in the order given: the i-th smallest p
    times (m - i), made monotone and capped at 1."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted.tolist()

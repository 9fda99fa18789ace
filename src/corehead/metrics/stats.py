"""Statistics over samples: means with bootstrap confidence intervals, paired permutation tests."""

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

"""Statistics against hand computations: the bootstrap over samples and control draws, Holm's adjustment."""

from __future__ import annotations

import numpy as np
import pytest

from corehead.metrics.stats import bootstrap_mean_ci, holm, samples_and_draws_ci


def test_with_all_draws_equal_it_is_the_sample_bootstrap() -> None:
    x = np.array([0.0, 1.0, 1.0, 0.0, 1.0, -1.0, 0.0])
    mean, low, high, _ = samples_and_draws_ci(np.tile(x, (4, 1)), seed=3)
    want = bootstrap_mean_ci(x[:, None], seed=3)
    assert mean == pytest.approx(float(want[0][0]))
    assert [low, high] == pytest.approx([float(want[1][0]), float(want[2][0])], abs=1e-12)


def test_without_sample_variance_the_width_comes_from_the_draws() -> None:
    """Two draws, one costing nothing and one costing 1 on every sample: a resampled pair of draws averages
    0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so the 95% interval is [0, 1] and about a quarter of the
    resampled means lie at 0 (p about 2 x 1/4). Resampling samples alone would give a zero-width interval."""
    values = np.array([[0.0] * 5, [1.0] * 5])
    mean, low, high, p = samples_and_draws_ci(values, n_boot=4000)
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    assert 0.45 < p < 0.55
    assert samples_and_draws_ci(values[1:])[1:3] == (1.0, 1.0)  # one draw: no spread at all
    assert samples_and_draws_ci(np.zeros((3, 4)))[3] == 1.0  # nothing happens: p is 1


def test_a_clear_effect_has_a_small_p_and_an_interval_away_from_zero() -> None:
    rng = np.random.default_rng(0)
    values = -0.5 + 0.1 * rng.normal(size=(5, 40))
    mean, low, high, p = samples_and_draws_ci(values)
    assert high < 0 and low < mean < high and p == pytest.approx(2 / 1001)
    with pytest.raises(ValueError, match="n_draws, n_samples"):
        samples_and_draws_ci(np.zeros(4))


def test_holm_against_a_hand_computation() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == []

"""The explorers of lessons 03 (running statistics) and 04 (effective batch of conv BN): their
simulations show what the lessons say, and each draws one figure headless."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minibn.widgets.conv_torch import (  # noqa: E402
    batch_mean_spread,
    correlated_maps,
    effective_batch_explorer,
)
from minibn.widgets.inference import running_stats_explorer, simulate_running_stats  # noqa: E402


def test_cs231n_momentum_is_one_minus_torchs():
    torch_style = simulate_running_stats(0.1, 8, convention="torch", seed=3)
    cs231n_style = simulate_running_stats(0.9, 8, convention="cs231n", seed=3)
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(torch_style[key], cs231n_style[key])


@pytest.mark.parametrize("batch_size", [2, 4])
def test_biased_running_variance_settles_m_minus_1_over_m_low(batch_size):
    s = simulate_running_stats(0.05, batch_size, steps=3000, seed=0)
    tail = slice(1500, None)  # the drift has died out; average over many batches
    ratio = s["running_var_biased"][tail].mean() / s["running_var"][tail].mean()
    assert ratio == pytest.approx((batch_size - 1) / batch_size, rel=1e-9)
    assert s["running_var"][tail].mean() == pytest.approx(1.0, rel=0.15)


def test_running_stats_need_two_values():
    with pytest.raises(ValueError, match="batch_size"):
        simulate_running_stats(0.1, 1)


def test_correlated_maps_have_unit_variance():
    maps = correlated_maps(np.random.default_rng(0), 200, 16, 2.0)
    assert maps.var() == pytest.approx(1.0, rel=0.1)


def test_effective_batch_shrinks_with_spatial_correlation():
    n, size = 4, 16
    _, m_independent = batch_mean_spread(n, size, 0.0)
    _, m_correlated = batch_mean_spread(n, size, 3.0)
    assert m_independent == pytest.approx(n * size * size, rel=0.3)
    assert m_correlated < 0.1 * n * size * size


@pytest.mark.parametrize("explorer", [running_stats_explorer, effective_batch_explorer])
def test_explorers_draw_one_figure_headless(explorer, monkeypatch):
    monkeypatch.setenv("MINIBN_STATIC", "1")
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(plt.gcf()))
    explorer()
    plt.close("all")
    assert len(shown) == 1 and len(shown[0].axes) == 2

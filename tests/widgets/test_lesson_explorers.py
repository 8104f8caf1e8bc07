"""The explorers of lessons 01 and 02: they run the learner's functions and draw one figure
headless, and offer working controls in JupyterLab."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from minibn import functional as ref  # noqa: E402
from minibn.widgets.backward import cosine, draw_gradient_paths, gradient_paths_explorer  # noqa: E402
from minibn.widgets.normalize import (  # noqa: E402
    batch_statistics_explorer,
    draw_batch_statistics,
    sample_batches,
)


@pytest.fixture
def shown(monkeypatch):
    """Record every figure a draw shows, instead of rendering it."""
    figures = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: figures.append(plt.gcf()))
    yield figures
    plt.close("all")


def frozen_stats_backward(dout, cache):
    dx = dout * (cache.gamma * cache.inv_std).reshape(1, -1)
    return dx, (dout * cache.x_hat).sum(axis=0), dout.sum(axis=0)


def spy(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(args)
        return fn(*args, **kwargs)
    return wrapped


def test_sample_batches_gives_one_batch_per_column_and_rejects_batch_size_one():
    x = sample_batches(8, 50, shift=3.0, scale=2.0, population="two bumps", seed=1)
    assert x.shape == (8, 50)
    assert abs(x.mean() - 3.0) < 0.5
    with pytest.raises(ValueError, match="batch_size"):
        sample_batches(1, 10)


@pytest.mark.parametrize("population", ["normal", "skewed (lognormal)", "two bumps"])
def test_populations_are_standardized(population):
    z = sample_batches(1000, 200, population=population, seed=0)
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1.0) < 0.03


def test_batch_statistics_explorer_draws_once_headless_with_the_learners_forward(monkeypatch, shown):
    monkeypatch.setenv("MINIBN_STATIC", "1")
    calls = []
    batch_statistics_explorer(spy(ref.batchnorm_forward, calls))
    assert len(calls) == 1
    x = calls[0][0]
    assert x.shape[0] == 4  # the headless figure shows the small-batch effect
    assert len(shown) == 1 and len(shown[0].axes) == 3


def test_batch_statistics_figure_reports_the_probe_collapsing_below_sqrt_eps(shown):
    # A population with std 1e-3 and eps 1e-5: the probe's ideal normalized value is ~0.30.
    draw_batch_statistics(ref.batchnorm_forward, batch_size=64, log10_scale=-3.0, eps=1e-5,
                          batches=100)
    legend = shown[0].axes[2].get_legend().get_texts()[0].get_text()
    assert "0.302" in legend


def test_batch_statistics_explorer_builds_working_controls_interactively(monkeypatch, shown):
    monkeypatch.delenv("MINIBN_STATIC", raising=False)
    displayed = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda w: displayed.append(w))
    calls = []
    batch_statistics_explorer(spy(ref.batchnorm_forward, calls))
    (widget,) = displayed
    labels = {c.description for c in widget.children if hasattr(c, "description")}
    assert {"batch size m", "shift", "log10 scale", "eps", "population"} <= labels
    slider = next(c for c in widget.children if getattr(c, "description", "") == "batch size m")
    slider.value = 32
    assert calls and calls[-1][0].shape[0] == 32


def test_cosine():
    a = np.array([1.0, 2.0, -3.0])
    assert cosine(a, 2 * a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(a, np.zeros(3)) == 0.0


def test_gradient_paths_figure_shows_full_dx_vanishing_for_a_pure_shift_and_scale_push(shown):
    calls = []
    draw_gradient_paths(spy(ref.batchnorm_backward, calls), frozen_stats_backward, batch_size=16,
                        shift_push=1.0, scale_push=2.0, noise=0.0)
    assert len(calls) == 1
    full_line = shown[0].axes[0].get_lines()[1]
    assert np.abs(full_line.get_ydata()).max() < 1e-3  # eps = 1e-5 leaves a trace of the scale push
    frozen_line = shown[0].axes[0].get_lines()[0]
    assert np.abs(frozen_line.get_ydata()).max() > 1.0


def test_gradient_paths_explorer_draws_once_headless(monkeypatch, shown):
    monkeypatch.setenv("MINIBN_STATIC", "1")
    gradient_paths_explorer(ref.batchnorm_backward, frozen_stats_backward)
    assert len(shown) == 1

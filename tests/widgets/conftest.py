"""Fixtures shared by the explorer tests."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def static_figures(monkeypatch):
    """The figures an explorer shows in static mode (MINIBN_STATIC=1: one figure, no widgets),
    recorded instead of rendered."""
    figures = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: figures.append(plt.gcf()))
    monkeypatch.setenv("MINIBN_STATIC", "1")
    yield figures
    plt.close("all")

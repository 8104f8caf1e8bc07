"""minibn.widgets.explore: one static figure headless; in JupyterLab, controls that redraw once per
release, figures that never pile up, and plain values that stay plain values."""
import matplotlib

matplotlib.use("Agg")

import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from IPython.display import display as _display  # noqa: E402,F401

import minibn.widgets as mw  # noqa: E402


@pytest.fixture
def calls():
    return []


@pytest.fixture
def draw(calls):
    def draw(batch_size, eps=1e-5, label="x"):
        calls.append((batch_size, eps, label))
        fig, ax = plt.subplots()
        ax.plot([0, batch_size])  # left open on purpose: explore must not leak it
    return draw


def test_static_mode_draws_once_at_initial_values_and_leaks_no_figure(monkeypatch, draw, calls):
    monkeypatch.setenv("MINIBN_STATIC", "1")
    open_before = plt.get_fignums()
    assert mw.explore(draw, batch_size=ipywidgets.IntSlider(value=8, min=2, max=64), label="bn") is None
    assert calls == [(8, 1e-5, "bn")]
    assert plt.get_fignums() == open_before


@pytest.fixture
def shown(monkeypatch):
    """The interactive widget explore displays, captured instead of sent to a front end."""
    monkeypatch.delenv("MINIBN_STATIC", raising=False)
    widgets = []
    monkeypatch.setattr("IPython.display.display", lambda w, *a, **k: widgets.append(w))
    return widgets


def test_live_mode_redraws_on_change_without_piling_up_figures(shown, draw, calls):
    slider = ipywidgets.IntSlider(value=8, min=2, max=64)
    mw.explore(draw, batch_size=slider)
    (widget,) = shown
    assert isinstance(widget, ipywidgets.interactive)
    open_before = plt.get_fignums()
    slider.value = 9
    slider.value = 10
    assert [c[0] for c in calls] == [8, 9, 10]
    assert plt.get_fignums() == open_before


def test_sliders_redraw_on_release_not_per_pixel(shown, draw):
    slider = ipywidgets.FloatLogSlider(value=1e-5, base=10, min=-8, max=0)
    mw.explore(draw, batch_size=ipywidgets.IntSlider(value=8), eps=slider)
    assert slider.continuous_update is False


def test_plain_values_are_passed_through_not_turned_into_sliders(shown, draw, calls):
    mw.explore(draw, batch_size=ipywidgets.IntSlider(value=8), label="fixed")
    (widget,) = shown
    controls = [c for c in widget.children if isinstance(c, ipywidgets.ValueWidget)]
    assert len(controls) == 1  # only batch_size: neither `label` nor draw's default `eps` got a widget
    assert calls[-1] == (8, 1e-5, "fixed")

"""Interactive explorers for the lessons (ipywidgets + matplotlib).

``explore(draw, **controls)`` is the one entry point the lessons use: in JupyterLab it shows the
controls and redraws on every change; in a headless run (``MINIBN_STATIC=1``, as under the tests)
it draws once at the controls' initial values, so the executed notebook still holds a figure.
Lesson-specific explorers live in the submodules, one per lesson.
"""
from __future__ import annotations

from minibn.course import static_mode


def _is_widget(control):
    # Duck-typed so the static path never imports ipywidgets.
    return hasattr(control, "value") and hasattr(control, "observe")


def _initial_value(control):
    return control.value if _is_widget(control) else control


def _settle_on_release(control):
    # A slider drag with continuous updates queues one redraw per pixel; the figure then lags the
    # slider by seconds. Redraw once, when the learner lets go (arrow keys still redraw per step).
    if _is_widget(control) and hasattr(control, "continuous_update"):
        control.continuous_update = False
    return control


def _one_figure_per_call(draw):
    """Wrap ``draw`` so every call shows exactly the figures it made and leaves none open.

    A draw that forgets ``plt.show()`` still shows its figure, and figures never pile up in
    pyplot's registry across hundreds of redraws. Deliberately not ``functools.wraps``: ipywidgets
    would read ``draw``'s signature and turn its unlisted defaults into extra sliders.
    """

    def redraw(**values):
        import matplotlib.pyplot as plt

        before = set(plt.get_fignums())
        draw(**values)
        made = [n for n in plt.get_fignums() if n not in before]
        if made and "inline" in plt.get_backend():
            plt.show()  # the inline backend displays and closes every open figure
        for n in made:
            plt.close(n)

    return redraw


def explore(draw, **controls):
    """Show ``draw(**values)`` with one widget per keyword (ipywidgets controls or fixed values).

    ``draw`` makes its figure with pyplot (``plt.subplots``...) and may call ``plt.show()``; a
    figure it leaves open is shown for it. Any non-widget keyword is passed through unchanged (it
    never turns into a slider). Displays the controls itself and returns None, so a cell ending in
    ``explore(...)`` shows them once.
    """
    redraw = _one_figure_per_call(draw)
    if static_mode():
        redraw(**{name: _initial_value(c) for name, c in controls.items()})
        return
    import ipywidgets
    from IPython.display import display

    controls = {
        name: _settle_on_release(c) if _is_widget(c) else ipywidgets.fixed(c)
        for name, c in controls.items()
    }
    display(ipywidgets.interactive(redraw, **controls))

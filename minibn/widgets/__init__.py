"""Interactive explorers for the lessons (ipywidgets + matplotlib).

``explore(draw, **controls)`` is the one entry point the lessons use: in JupyterLab it shows the
controls and redraws on every change; in a headless run (``MINIBN_STATIC=1``, as under the tests)
it draws once at the controls' initial values, so the executed notebook still holds a figure.
Lesson-specific explorers live in the submodules, one per lesson.
"""
from __future__ import annotations

from minibn.course import static_mode


def _initial_value(control):
    return getattr(control, "value", control)


def explore(draw, **controls):
    """Show ``draw(**values)`` with one widget per keyword (ipywidgets controls or fixed values).

    ``draw`` must create and show its own matplotlib figure (``plt.show()``). Displays the
    controls itself and returns None, so a cell ending in ``explore(...)`` shows them once.
    """
    if static_mode():
        draw(**{name: _initial_value(c) for name, c in controls.items()})
        return
    import ipywidgets

    widget = ipywidgets.interactive(draw, **controls)
    from IPython.display import display

    display(widget)

"""The set-up every lesson runs first, and the fast/full switch.

``MINIBN_FAST=1`` (set by the tests, CI and the grader) makes lessons use small sizes and few
steps so each runs in well under a minute on two cores; nbgrader's Validate button gets the same
(``fast_mode``). Without either, a lesson runs at full size for people.
``MINIBN_STATIC=1`` (also set by the tests) makes explorers draw one static figure instead of
widgets, since a headless run has no front end to render them.
"""
from __future__ import annotations

import os
import random
import sys

import numpy as np


def fast_mode():
    """True when lessons should run small: ``MINIBN_FAST=1`` (tests, CI, grading), or nbgrader is
    executing the notebook (``NBGRADER_EXECUTION``, set by Validate and by autograde).

    Validate in a plain ``make lab`` session then runs what the grader runs, at grading size and
    within nbgrader's per-cell time limit; the graded cells are the same at either size.
    ``MINIBN_FAST=0`` forces full size even there.
    """
    flag = os.environ.get("MINIBN_FAST", "")
    if flag:
        return flag != "0"
    return bool(os.environ.get("NBGRADER_EXECUTION"))


def static_mode():
    """True when explorers should draw static figures: ``MINIBN_STATIC=1``."""
    return os.environ.get("MINIBN_STATIC", "") not in ("", "0")


def setup(seed=0, torch=None):
    """Seed NumPy and Python, and torch when asked (``torch=True``); returns ``fast_mode()``.

    ``torch=True`` imports torch, seeds it (``torch.manual_seed(seed)``) and gives it one thread:
    on a small CPU, torch's default thread pool fights other processes and runs small models
    several times slower. ``torch=False`` leaves torch alone, so a NumPy-only lesson (and every
    grading kernel that runs it) does not pay the seconds importing torch costs. Every lesson
    that imports torch says ``setup(torch=True)`` in its first cell; ``minibn.grading.conventions``
    checks it. ``torch=None`` (the default, for code written before the flag) seeds torch only
    if something imported it already.
    """
    random.seed(seed)
    np.random.seed(seed)
    if torch is None:
        module = sys.modules.get("torch")
    elif torch:
        import torch as module
    else:
        module = None
    if module is not None:
        module.manual_seed(seed)
        module.set_num_threads(1)
    return fast_mode()


FIGURE_FORMATS = (".png", ".svg", ".pdf")


def save_figure(fig, name, directory="figures"):
    """Save ``fig`` as ``<directory>/<name>`` (PNG unless ``name`` ends in .svg or .pdf); return the path.

    ``directory`` is relative to the working directory, which in Jupyter is the notebook's folder,
    so a lesson's figures land in ``figures/`` next to it, ready for a report or slides.
    """
    from pathlib import Path

    if not name or Path(name).name != name:
        raise ValueError(f"save_figure: name must be a plain file name, got {name!r}")
    path = Path(directory) / name
    if path.suffix.lower() not in FIGURE_FORMATS:
        if path.suffix:
            raise ValueError(f"save_figure: {name!r}: use one of {', '.join(FIGURE_FORMATS)} or no suffix")
        path = path.with_suffix(".png")
    if not hasattr(fig, "savefig"):
        raise TypeError(f"save_figure: expected a matplotlib Figure, got {type(fig).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path

"""The set-up every lesson runs first, and the fast/full switch.

``MINIBN_FAST=1`` (set by the tests and CI) makes lessons use small sizes and few steps so each
runs in well under a minute on two cores; without it a lesson runs at full size for people.
``MINIBN_STATIC=1`` (also set by the tests) makes explorers draw one static figure instead of
widgets, since a headless run has no front end to render them.
"""
from __future__ import annotations

import os
import random
import sys

import numpy as np


def fast_mode():
    """True when lessons should run small (tests, CI): ``MINIBN_FAST=1``."""
    return os.environ.get("MINIBN_FAST", "") not in ("", "0")


def static_mode():
    """True when explorers should draw static figures: ``MINIBN_STATIC=1``."""
    return os.environ.get("MINIBN_STATIC", "") not in ("", "0")


def setup(seed=0):
    """Seed NumPy, Python and, if the lesson imported it first, torch (with one thread).

    Returns ``fast_mode()``. torch is seeded only when already imported: importing it costs
    seconds, which NumPy-only lessons (and every grading kernel that runs them) should not pay,
    so a lesson that uses torch imports it before calling ``setup``. One thread: on a small CPU,
    torch's default thread pool fights other processes and runs small models several times slower.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
        torch.set_num_threads(1)
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

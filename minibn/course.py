"""The set-up every lesson runs first, and the fast/full switch.

``MINIBN_FAST=1`` (set by the tests and CI) makes lessons use small sizes and few steps so each
runs in well under a minute on two cores; without it a lesson runs at full size for people.
``MINIBN_STATIC=1`` (also set by the tests) makes explorers draw one static figure instead of
widgets, since a headless run has no front end to render them.
"""
from __future__ import annotations

import os
import random

import numpy as np


def fast_mode():
    """True when lessons should run small (tests, CI): ``MINIBN_FAST=1``."""
    return os.environ.get("MINIBN_FAST", "") not in ("", "0")


def static_mode():
    """True when explorers should draw static figures: ``MINIBN_STATIC=1``."""
    return os.environ.get("MINIBN_STATIC", "") not in ("", "0")


def setup(seed=0):
    """Seed NumPy, Python and (if installed) torch; use one torch thread. Returns ``fast_mode()``.

    One thread: on a small CPU, torch's default thread pool fights other processes and runs
    small models several times slower.
    """
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.manual_seed(seed)
        torch.set_num_threads(1)
    return fast_mode()

"""Paper reproductions at CPU scale (setups, criteria and their calibration: docs/reproductions.md).

Each experiment is a module with ``config(fast=True, seed=0, **overrides) -> dict``,
``run(cfg, progress=True) -> Result``, ``claims(result) -> [Claim]`` and
``plot(result) -> [Figure]``; run one from the shell with
``python -m minibn.experiments NAME --fast|--full --seed S --out DIR``.
"""
from __future__ import annotations

import importlib

from minibn.experiments.result import Claim, Result

# name -> module, in the order the report lists them
EXPERIMENTS = {
    "figure1": "minibn.experiments.e1_figure1",
    "noisy_bn": "minibn.experiments.e2_noisy_bn",
    "ics_landscape": "minibn.experiments.e3_ics_landscape",
    "deep_linear": "minibn.experiments.e4_deep_linear",
    "learning_rates": "minibn.experiments.e5_learning_rates",
    "population_stats": "minibn.experiments.e6_population_stats",
    "convnet": "minibn.experiments.e7_convnet",
    "beyond_one_batch": "minibn.experiments.e8_beyond_one_batch",
}


def load(name):
    """Import and return the experiment module called ``name`` (a key of ``EXPERIMENTS``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


__all__ = ["EXPERIMENTS", "Claim", "Result", "load"]

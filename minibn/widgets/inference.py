"""Explorer for lesson 03-inference: how momentum and batch size shape the running statistics.

A BN layer's input drifts while the network trains. ``running_stats_explorer()`` simulates that
stream: batches of ``batch_size`` values from N(mu_t, sigma_t^2), where mu_t and sigma_t move
towards their final values as "training" proceeds, and shows what the running mean and
variance make of it for a given momentum and convention:

- torch's ``running = (1 - momentum) * running + momentum * batch_stat``;
- CS231n's / Keras's ``running = momentum * running + (1 - momentum) * batch_stat``, the same
  number meaning the opposite;
- the running variance fed with biased batch variances, which settles (m - 1)/m too low.
"""
from __future__ import annotations

import numpy as np

from minibn.conventions import update_running_stat
from minibn.widgets import explore

__all__ = ["simulate_running_stats", "running_stats_explorer"]


def _drift(steps, start, end, tau):
    t = np.arange(steps)
    return end + (start - end) * np.exp(-t / tau)


def simulate_running_stats(momentum, batch_size, steps=400, convention="torch", seed=0):
    """Running mean/variance over a drifting stream of batches (one channel).

    Returns a dict of ``(steps,)`` arrays: ``true_mean``, ``true_var`` (the distribution at each
    step), ``running_mean``, ``running_var`` (unbiased batch variances) and
    ``running_var_biased`` (the bug: biased batch variances).
    """
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2: one value has no variance")
    rng = np.random.default_rng(seed)
    true_mean = _drift(steps, 3.0, 0.5, steps / 6)
    true_var = _drift(steps, 4.0, 1.0, steps / 6)
    weight_new = momentum if convention == "torch" else 1.0 - momentum
    rm, rv, rvb = 0.0, 1.0, 1.0  # torch's initial buffers
    out = {k: np.empty(steps) for k in ("running_mean", "running_var", "running_var_biased")}
    for t in range(steps):
        x = rng.normal(true_mean[t], np.sqrt(true_var[t]), batch_size)
        rm = update_running_stat(rm, x.mean(), weight_new)
        rv = update_running_stat(rv, x.var(ddof=1), weight_new)
        rvb = update_running_stat(rvb, x.var(), weight_new)
        out["running_mean"][t], out["running_var"][t], out["running_var_biased"][t] = rm, rv, rvb
    out.update(true_mean=true_mean, true_var=true_var)
    return out


def _draw(momentum, batch_size, convention):
    import matplotlib.pyplot as plt

    s = simulate_running_stats(momentum, batch_size, convention=convention)
    fig, (ax_m, ax_v) = plt.subplots(1, 2, figsize=(11, 3.6))
    ax_m.plot(s["true_mean"], "k--", label="true mean (drifting)")
    ax_m.plot(s["running_mean"], label="running mean")
    ax_m.set(xlabel="training step", title=f"mean: momentum {momentum:g} ({convention})")
    ax_v.plot(s["true_var"], "k--", label="true variance")
    ax_v.plot(s["running_var"], label="running var (unbiased batch var)")
    ax_v.plot(s["running_var_biased"], alpha=0.7, label="running var (biased: the bug)")
    ax_v.set(xlabel="training step", title=f"variance: batch size {batch_size}")
    for ax in (ax_m, ax_v):
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def running_stats_explorer(momentum=0.1, batch_size=4, convention="torch"):
    """Sliders for momentum and batch size, a menu for the convention (torch / cs231n)."""
    import ipywidgets as w

    explore(
        _draw,
        momentum=w.FloatLogSlider(value=momentum, base=10, min=-3, max=0, step=0.1,
                                  description="momentum"),
        batch_size=w.IntSlider(value=batch_size, min=2, max=128, description="batch size"),
        convention=w.Dropdown(options=["torch", "cs231n"], value=convention,
                              description="convention"),
    )

"""Explorer for lesson 02-backward: what the paths through the batch statistics remove from dx.

``gradient_paths_explorer(backward, backward_frozen_stats)`` builds an upstream gradient ``dout``
for one channel out of three parts (a constant push, a push along x_hat and noise), and plots the
full ``dx`` against the frozen-statistics ``dx`` sample by sample. The full gradient is the frozen
one with its components along 1 and x_hat projected out, so a ``dout`` that only wants to move
the batch's mean or scale gives no gradient at all.
"""
from __future__ import annotations

import numpy as np

from minibn.functional import batchnorm_forward
from minibn.widgets import explore


def cosine(a, b):
    """Cosine similarity of two arrays, flattened (0 when either is zero)."""
    a, b = np.ravel(a), np.ravel(b)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def draw_gradient_paths(backward, backward_frozen_stats, batch_size=32, shift_push=1.0,
                        scale_push=1.0, noise=1.0, seed=0):
    """Scatter dx (full and frozen) against x_hat for one channel of ``batch_size`` values."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (batch_size, 1))
    _, cache = batchnorm_forward(x, np.ones(1), np.zeros(1), 1e-5)
    dout = shift_push + scale_push * cache.x_hat + noise * rng.normal(0.0, 1.0, x.shape)
    dx_full = np.asarray(backward(dout, cache)[0])
    dx_frozen = np.asarray(backward_frozen_stats(dout, cache)[0])

    order = np.argsort(cache.x_hat[:, 0])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(cache.x_hat[order, 0], dx_frozen[order, 0], "o-", ms=4, lw=0.8, color="C1",
            label="frozen statistics: gamma * inv_std * dout")
    ax.plot(cache.x_hat[order, 0], dx_full[order, 0], "o-", ms=4, lw=0.8, color="C0",
            label="full gradient (through mu and var)")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel(r"$\hat x_i$ (samples sorted)")
    ax.set_ylabel(r"$\partial\ell/\partial x_i$")
    ax.set_title(f"m = {batch_size}: cos(full, frozen) = {cosine(dx_full, dx_frozen):.3f}, "
                 f"sum dx: full {dx_full.sum():+.1e}, frozen {dx_frozen.sum():+.2f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def gradient_paths_explorer(backward, backward_frozen_stats):
    """Sliders for the batch size and the three parts of ``dout``; both backward functions are
    the learner's, each ``(dout, cache) -> (dx, dgamma, dbeta)``."""
    import ipywidgets as w

    def draw(batch_size, shift_push, scale_push, noise):
        draw_gradient_paths(backward, backward_frozen_stats, batch_size, shift_push, scale_push,
                            noise)

    explore(
        draw,
        batch_size=w.SelectionSlider(options=[2, 3, 4, 8, 16, 32, 64, 128], value=16,
                                     description="batch size m"),
        shift_push=w.FloatSlider(value=1.0, min=-3.0, max=3.0, step=0.1,
                                 description="dout along 1"),
        scale_push=w.FloatSlider(value=1.0, min=-3.0, max=3.0, step=0.1,
                                 description="dout along x_hat"),
        noise=w.FloatSlider(value=0.5, min=0.0, max=3.0, step=0.1, description="noise"),
    )

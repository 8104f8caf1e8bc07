"""Explorer for lesson 01-normalize: how the batch size sets the noise in batch statistics.

``batch_statistics_explorer(batchnorm_forward)`` draws many independent mini-batches from one
population, normalizes each with *its own* statistics (through the learner's forward pass) and
shows what that does: the histogram of normalized activations, how far each batch's mean and
variance stray from the population's, and how differently one fixed input is normalized
depending on which batch it lands in.
"""
from __future__ import annotations

import numpy as np

from minibn.course import fast_mode
from minibn.widgets import explore

# Standardized populations (mean 0, variance 1), so the shift and scale controls mean what they say.
_POPULATIONS = {
    "normal": lambda rng, size: rng.standard_normal(size),
    "skewed (lognormal)": lambda rng, size: (rng.lognormal(0.0, 0.75, size) - np.exp(0.28125))
    / np.sqrt((np.exp(0.5625) - 1.0) * np.exp(0.5625)),
    "two bumps": lambda rng, size: (rng.choice([-1.0, 1.0], size) * 0.95
                                    + 0.3122 * rng.standard_normal(size)),
}

# The input planted in every batch: one population standard deviation above the mean.
_PROBE = 1.0


def sample_batches(batch_size, batches, shift=0.0, scale=1.0, population="normal", seed=0):
    """``batches`` independent mini-batches of ``batch_size`` draws, as the columns of an array.

    Returns ``x`` of shape ``(batch_size, batches)``: since batch norm takes one mean and variance
    per column (channel axis 1), a single forward call normalizes every batch with its own
    statistics.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (one value has no variance), got {batch_size}")
    rng = np.random.default_rng(seed)
    return shift + scale * _POPULATIONS[population](rng, (batch_size, batches))


def draw_batch_statistics(batchnorm_forward, batch_size=16, shift=0.0, log10_scale=0.0,
                          eps=1e-5, population="normal", batches=None, seed=0):
    """One figure: normalized activations, the spread of batch statistics, and the probe's fate.

    ``batchnorm_forward(x, gamma, beta, eps) -> (out, cache)`` is the learner's forward pass.
    """
    import matplotlib.pyplot as plt

    batches = batches or (300 if fast_mode() else 2000)
    scale = 10.0 ** log10_scale
    # Two sets of batches in one forward call: plain ones for the statistics, and ones whose
    # row 0 is the same planted input, to follow that input through every batch.
    x = sample_batches(batch_size, 2 * batches, shift, scale, population, seed)
    x[0, batches:] = shift + scale * _PROBE
    ones, zeros = np.ones(2 * batches), np.zeros(2 * batches)
    out, _ = batchnorm_forward(x, ones, zeros, eps)
    out, probe = np.asarray(out)[:, :batches], np.asarray(out)[0, batches:]
    x = x[:, :batches]
    means, variances = x.mean(axis=0), x.var(axis=0)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    z = (x - shift) / scale
    ax.hist(z.ravel(), bins=60, density=True, color="0.75", label="input, standardized with the\n"
            "population's mean and std")
    ax.hist(out.ravel(), bins=60, density=True, histtype="step", lw=2, color="C0",
            label="BN output (each batch's own stats)")
    grid = np.linspace(-4, 4, 200)
    ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
    ax.set_xlim(-4, 4)
    ax.set_ylim(0, 1.4 * ax.get_ylim()[1])
    ax.set_title(f"normalized activations, batch size {batch_size}")
    ax.legend(fontsize=8, loc="upper left", ncol=1, framealpha=0.9)

    ax = axes[1]
    ax.scatter((means - shift) / scale, variances / scale**2, s=6, alpha=0.4)
    ax.axvline(0, color="k", lw=0.8)
    ax.axhline(1, color="k", lw=0.8)
    spread_mean = np.std(means) / scale
    ax.set_xlabel(r"batch mean $\mu_B$ (in population std from the true mean)")
    ax.set_ylabel(r"batch variance $\sigma_B^2$ / population variance")
    ax.set_title(f"{batches} batches: std of $\\mu_B$ = {spread_mean:.3f} "
                 f"(theory $1/\\sqrt{{m}}$ = {1 / np.sqrt(batch_size):.3f})", fontsize=10)

    ax = axes[2]
    ideal = _PROBE * np.sqrt(scale**2 / (scale**2 + eps))
    ax.hist(probe, bins=40, color="C1")
    ax.axvline(ideal, color="k", ls="--", lw=1, label=f"with population stats: {ideal:.3f}")
    lo, hi = np.percentile(probe, [5, 95])
    ax.set_title(f"one fixed input (population mean + 1 std):\n90% of batches map it into "
                 f"[{lo:.2f}, {hi:.2f}]", fontsize=10)
    ax.set_xlabel(r"its normalized value $\hat x$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def batch_statistics_explorer(batchnorm_forward):
    """Sliders for batch size, input shift and scale, eps and the population's shape.

    In a headless run (``MINIBN_STATIC=1``) draws once at batch size 4 so the figure shows the
    small-batch effect.
    """
    import ipywidgets as w

    def draw(batch_size, shift, log10_scale, eps, population):
        draw_batch_statistics(batchnorm_forward, batch_size, shift, log10_scale, eps, population)

    explore(
        draw,
        batch_size=w.SelectionSlider(options=[2, 3, 4, 8, 16, 32, 64, 128, 256], value=4,
                                     description="batch size m"),
        shift=w.FloatSlider(value=0.0, min=-100.0, max=100.0, step=1.0, description="shift"),
        log10_scale=w.FloatSlider(value=0.0, min=-4.0, max=2.0, step=0.25,
                                  description="log10 scale"),
        eps=w.SelectionSlider(options=[0.0, 1e-8, 1e-5, 1e-3, 1e-1], value=1e-5, description="eps"),
        population=w.Dropdown(options=list(_POPULATIONS), value="normal",
                              description="population"),
    )

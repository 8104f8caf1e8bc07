"""Explorer for lesson 04-conv-torch: the effective batch size of spatial batch norm.

A conv channel's statistics pool ``m = N * H * W`` values, the paper's effective mini-batch
``m * p * q``. That counts values, not independent ones: neighbouring pixels of a feature map are
correlated, so the batch mean is noisier than ``sigma / sqrt(N * H * W)`` suggests.
``effective_batch_explorer()`` draws feature maps of unit variance with a given spatial
correlation length and shows how the batch mean scatters across batches.
"""
from __future__ import annotations

import numpy as np

from minibn.widgets import explore

__all__ = ["correlated_maps", "batch_mean_spread", "effective_batch_explorer"]


def correlated_maps(rng, n, size, length):
    """``(n, size, size)`` maps of mean 0, variance 1, Gaussian correlation of ``length`` pixels."""
    noise = rng.normal(size=(n, size, size))
    if length <= 0:
        return noise
    freq = np.fft.fftfreq(size)
    k2 = freq[:, None] ** 2 + freq[None, :] ** 2
    kernel = np.exp(-2 * (np.pi * length) ** 2 * k2)  # Fourier transform of a Gaussian blur
    maps = np.fft.ifft2(np.fft.fft2(noise) * kernel).real
    return maps / np.sqrt(np.mean(kernel**2))  # back to unit variance per pixel


def batch_mean_spread(n, size, length, trials=300, seed=0):
    """Batch means over ``trials`` batches, and the effective m = 1 / var(batch mean)."""
    rng = np.random.default_rng(seed)
    means = np.array([correlated_maps(rng, n, size, length).mean() for _ in range(trials)])
    return means, 1.0 / means.var()


def _draw(batch, size, length):
    import matplotlib.pyplot as plt

    means, m_eff = batch_mean_spread(batch, size, length)
    m = batch * size * size
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(10, 3.6),
                                          gridspec_kw={"width_ratios": [1, 2]})
    ax_map.imshow(correlated_maps(np.random.default_rng(1), 1, size, length)[0], cmap="RdBu")
    ax_map.set(title=f"one {size}x{size} feature map", xticks=[], yticks=[])
    ax_hist.hist(means, bins=30, density=True, alpha=0.7, label="batch means (300 batches)")
    grid = np.linspace(means.min(), means.max(), 200)
    sd = 1 / np.sqrt(m)
    ax_hist.plot(grid, np.exp(-grid**2 / (2 * sd**2)) / (sd * np.sqrt(2 * np.pi)), "k--",
                 label=f"if all m = N·H·W = {m} values were independent")
    ax_hist.set(title=f"batch mean of one channel: effective m ≈ {m_eff:.0f} of {m}",
                xlabel="batch mean (true mean 0, variance 1 per value)")
    ax_hist.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def effective_batch_explorer(batch=4, size=16, length=2.0):
    """Sliders: batch size N, feature-map size H = W, spatial correlation length (pixels)."""
    import ipywidgets as w

    explore(
        _draw,
        batch=w.IntSlider(value=batch, min=1, max=64, description="batch N"),
        size=w.IntSlider(value=size, min=2, max=32, description="H = W"),
        length=w.FloatSlider(value=length, min=0.0, max=8.0, step=0.5, description="corr. length"),
    )

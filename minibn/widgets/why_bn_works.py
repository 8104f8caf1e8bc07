"""Lesson 08 explorer: how the loss changes along the gradient, with and without BatchNorm.

``landscape_explorer(snapshots, batch)`` shows, for a standard and a BN net saved at a few
training steps, the loss at ``theta - m * lr * g`` as the step multiplier m grows: a slider for
the largest multiplier, a dropdown for the training step. The BN curve stays smooth and
predictable far beyond where the standard net's loss has blown up.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minibn.experiments.torch_mlp import LABELS, MLP
from minibn.experiments.torch_train import batches, sgd_step
from minibn.widgets import explore


def train_snapshots(data, variants=("std", "bn"), steps=(0, 100, 300), lr=0.1, seed=0,
                    depth=10, width=100, batch=128):
    """Train each variant, keeping a copy of its parameters at each of ``steps``.

    Returns ``{variant: {step: model}}`` (models with the parameters at that step).
    """
    x_train, y_train = data[0], data[1]
    out = {}
    for v in variants:
        gen = torch.Generator().manual_seed(seed)
        sizes = [x_train.shape[1]] + [width] * depth + [10]
        model = MLP(sizes, norm=v, generator=gen)
        out[v] = {}
        for step, idx in enumerate(batches(len(x_train), batch, max(steps) + 1, gen)):
            if step in steps:
                snap = MLP(sizes, norm=v)
                with torch.no_grad():
                    for dst, src in zip(snap.params, model.params):
                        dst.copy_(src)
                out[v][step] = snap
            loss = F.cross_entropy(model.forward(x_train[idx]), y_train[idx])
            sgd_step(model.params, torch.autograd.grad(loss, model.params), lr)
    return out


def losses_along_gradient(model, x, y, lr, multipliers):
    """Loss at ``theta - m * lr * g`` for each multiplier m (theta restored afterwards)."""
    loss = F.cross_entropy(model.forward(x), y)
    grads = torch.autograd.grad(loss, model.params)
    saved = [p.detach().clone() for p in model.params]
    out = []
    with torch.no_grad():
        for m in multipliers:
            for p, s, g in zip(model.params, saved, grads):
                p.copy_(s - m * lr * g)
            out.append(float(F.cross_entropy(model.forward(x), y)))
        for p, s in zip(model.params, saved):
            p.copy_(s)
    return np.array(out)


def landscape_explorer(snapshots, batch, lr=0.1):
    """Explore the loss along the gradient for each saved step; ``batch`` is ``(x, y)``."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    steps = sorted(next(iter(snapshots.values())))
    x, y = batch

    def draw(step, max_multiplier):
        mults = np.linspace(0, max_multiplier, 25)
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for v, snaps in snapshots.items():
            ax.plot(mults, losses_along_gradient(snaps[step], x, y, lr, mults), marker=".",
                    label=LABELS[v])
        ax.axvline(1.0, color="gray", lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="step along -g, in multiples of the learning rate",
               ylabel="loss on this batch", title=f"loss along the gradient at training step {step}")
        ax.legend()
        plt.show()

    explore(draw,
            step=widgets.Dropdown(options=steps, value=steps[-1], description="train step"),
            max_multiplier=widgets.FloatSlider(value=4.0, min=0.5, max=30.0, step=0.5,
                                               description="max m"))

"""Explorers for lesson 05-figure1: init scale and learning rate, with and without BN.

- ``init_scale_explorer()``: the Figure 1 net (784-100-100-100-10 sigmoid) at initialization,
  for a chosen weight std, with or without BN: the histogram of every hidden layer's sigmoid
  input over a batch of MNIST images, and the size of each layer's weight gradient. Small inits
  squash every plain sigmoid input to ~0 (the sigmoid is then linear and the gradients vanish
  layer by layer); BN rescales them to unit variance whatever the init.
- ``learning_rate_explorer()``: a deep ReLU net trained for a few hundred steps at a chosen
  learning rate, with and without BN: the training loss curves (a curve that stops diverged).
"""
from __future__ import annotations

import numpy as np

from minibn.experiments.numpy_mlp import MLP, Linear, make_rng, softmax_cross_entropy
from minibn.experiments.numpy_train import train
from minibn.widgets import explore

__all__ = ["activations_at_init", "init_scale_explorer", "learning_rate_explorer", "loss_curves"]

_DATA = {}


def _mnist():
    if "d" not in _DATA:
        from minibn.data import load_mnist

        _DATA["d"] = load_mnist(flatten=True)
    return _DATA["d"]


def activations_at_init(init_std, batchnorm, n=500, seed=0):
    """Sigmoid inputs ``[(n, 100)] * 3`` and weight-gradient norms (one per layer) at init."""
    d = _mnist()
    model = MLP([784, 100, 100, 100, 10], "sigmoid", batchnorm=batchnorm, init=init_std,
                rng=make_rng(seed))
    x, y = d.x_train[:n], d.y_train[:n]
    _, dlogits = softmax_cross_entropy(model.forward(x, train=True), y)
    inputs = list(model.pre_activations)
    model.backward(dlogits)
    norms = [float(np.linalg.norm(layer.dW)) for layer in model.layers if isinstance(layer, Linear)]
    return inputs, norms


def _draw_init(init_std, batchnorm):
    import matplotlib.pyplot as plt

    inputs, norms = activations_at_init(init_std, batchnorm)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
    for k, (ax, h) in enumerate(zip(axes, inputs)):
        ax.hist(h.ravel(), bins=60, color="C3" if batchnorm else "0.4")
        ax.set(title=f"hidden layer {k + 1}: std {h.std():.3g}", xlabel="sigmoid input")
    axes[-1].bar(range(1, len(norms) + 1), norms, color="C0")
    axes[-1].set_yscale("log")
    axes[-1].set(title="|dL/dW| per layer at init", xlabel="layer (4 = output)")
    fig.suptitle(f"Figure 1 net at init: weight std {init_std:g}, {'with' if batchnorm else 'without'} BN")
    fig.tight_layout()
    plt.show()


def init_scale_explorer(init_std=0.01, batchnorm=False):
    """A log slider for the init std and a BN checkbox."""
    import ipywidgets as w

    explore(
        _draw_init,
        init_std=w.FloatLogSlider(value=init_std, base=10, min=-3, max=0.5, step=0.25,
                                  description="init std"),
        batchnorm=w.Checkbox(value=batchnorm, description="BN"),
    )


def loss_curves(lr, steps=300, depth=6, seed=0):
    """{"plain": losses, "bn": losses} for a ``depth``-layer ReLU MLP (He init) at ``lr``."""
    d = _mnist()
    out = {}
    for name, bn in (("plain", False), ("bn", True)):
        rng = make_rng(seed)
        model = MLP([784] + [100] * depth + [10], "relu", batchnorm=bn, init="he", rng=rng)
        out[name] = train(model, d.x_train, d.y_train, steps=steps, lr=lr, batch_size=128,
                          rng=rng)["loss"]
    return out


def _draw_lr(lr, steps):
    import matplotlib.pyplot as plt

    curves = loss_curves(lr, steps)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, style in (("plain", "--"), ("bn", "-")):
        loss = np.asarray(curves[name])
        ok = np.isfinite(loss)
        ax.plot(np.arange(1, len(loss) + 1)[ok], loss[ok], style,
                label=f"{'BN' if name == 'bn' else 'no BN'}"
                      + ("" if ok.all() else f" (diverged at step {len(loss)})"))
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="training loss", title=f"6-layer ReLU MLP, lr {lr:g}")
    ax.legend()
    fig.tight_layout()
    plt.show()


def learning_rate_explorer(lr=1.0, steps=300):
    """A log slider for the learning rate (0.001 to 10)."""
    import ipywidgets as w

    explore(_draw_lr, lr=w.FloatLogSlider(value=lr, base=10, min=-3, max=1, step=0.25,
                                          description="lr"), steps=steps)

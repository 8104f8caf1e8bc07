"""Training the torch MLP (``torch_mlp``): data, SGD, batches, evaluation, batch statistics.

- ``load_data(seed)``: MNIST-5k as tensors; ``batches(n, batch, steps, generator)``;
  ``loss_and_grads``; ``sgd_step(params, grads, lr)``; ``steps_below(losses, threshold)``.
- ``accuracy(model, x, y, stats=None, batch_size=None)``: with population statistics, or
  each evaluation batch's own.
- ``batch_moments(h)``, ``train_mode_moments(model, x)`` and ``precise_bn(model, x, ...)``:
  the statistics BN normalizes with, and population statistics pooled over batches.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minibn.functional import pooled_moments

__all__ = ["accuracy", "batch_moments", "batches", "load_data", "loss_and_grads", "precise_bn",
           "sgd_step", "steps_below", "train_mode_moments"]


def load_data(seed=0):
    """``(x_train, y_train, x_test, y_test)`` as float32/int64 tensors, pixels in [0, 1].

    MNIST-5k from ``minibn.data`` (4,000 train / 1,000 test, stratified); the split depends on
    ``seed``. Rows come out shuffled: a class-sorted order breaks batch statistics (see E6).
    """
    from minibn.data import load_mnist

    d = load_mnist(seed=seed, flatten=True)
    return (torch.from_numpy(d.x_train), torch.from_numpy(d.y_train),
            torch.from_numpy(d.x_test), torch.from_numpy(d.y_test))


def loss_and_grads(model, x, y, noise=None, create_graph=False):
    """Cross-entropy of ``model`` on ``(x, y)`` and its gradients w.r.t. ``model.params``."""
    loss = F.cross_entropy(model.forward(x, noise=noise), y)
    grads = torch.autograd.grad(loss, model.params, create_graph=create_graph)
    return loss, grads


def sgd_step(params, grads, lr):
    """Plain SGD in place: ``p -= lr * g`` for every tensor."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g


def batches(n, batch, steps, generator):
    """``steps`` index tensors of size ``batch``: shuffled epochs over ``n`` examples."""
    order = torch.randperm(n, generator=generator)
    pos = 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=generator), 0
        yield order[pos:pos + batch]
        pos += batch


def steps_below(losses, threshold, window=50):
    """First step at which the running mean of the last ``window`` losses is below threshold."""
    running = np.convolve(losses, np.ones(window) / window, mode="valid")
    hit = np.flatnonzero(running < threshold)
    return int(hit[0] + window) if hit.size else None


def _as_dtype(stats):
    return [(m.float(), v.float()) for m, v in stats]


@torch.no_grad()
def accuracy(model, x, y, stats=None, batch_size=None):
    """Accuracy on ``(x, y)`` in its given order.

    stats: per-layer population (mean, var) to normalize with; None with ``batch_size`` uses
    each consecutive batch's own statistics (mini-batch statistics at inference).
    """
    if stats is not None:
        return float((model.forward(x, stats=_as_dtype(stats)).argmax(1) == y).float().mean())
    size = len(x) if batch_size is None else batch_size
    hits = sum(int((model.forward(x[i:i + size]).argmax(1) == y[i:i + size]).sum())
               for i in range(0, len(x), size))
    return hits / len(x)


def batch_moments(h):
    """Per-feature mean and *biased* variance of ``h`` (N, D): what BN normalizes a batch with."""
    h = h.detach().to(torch.float64)
    var, mean = torch.var_mean(h, dim=0, correction=0)
    return mean, var


def train_mode_moments(model, x):
    """Per hidden layer, ``(mean, biased var)`` of its pre-normalization input on batch ``x``,
    with the model in training mode (every layer normalized by batch statistics)."""
    taps = []
    with torch.no_grad():
        model.forward(x, taps=taps)
    return [batch_moments(h) for h, _ in taps]


def precise_bn(model, x, batch_size, generator=None, num_batches=None):
    """Population statistics per hidden layer from ``num_batches`` batches of ``x`` (all of
    ``x`` if None), pooled with ``minibn.functional.pooled_moments``: a list of
    ``(mean, unbiased var)``."""
    n = len(x)
    count = n // batch_size if num_batches is None else num_batches
    per_layer = None
    for idx in batches(n, batch_size, count, generator):
        moments = train_mode_moments(model, x[idx])
        per_layer = [[] for _ in moments] if per_layer is None else per_layer
        for acc, mv in zip(per_layer, moments):
            acc.append(mv)
    return [pooled_moments([batch_size] * len(acc), [m for m, _ in acc], [v for _, v in acc])
            for acc in per_layer]

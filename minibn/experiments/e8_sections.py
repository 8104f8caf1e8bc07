"""E8's measurements, one per section of lesson 09 (the experiment itself: ``e8_beyond_one_batch``).

- ``small_batch_sweep(tensors, batch_sizes, steps)``: lesson 07's convnet with batch norm, group
  norm, Batch Renorm or ghost BN after every convolution, trained at each batch size; test
  accuracies in eval mode (running statistics, as deployed).
- ``variance_errors(dtype, ratios)``: the relative error of per-channel variances computed in
  ``dtype`` (two-pass, one-pass) or in float32, against float64.
- ``variance_shift(x, rates)``: dropout before batch norm, running vs inference-time variance.
- ``weight_decay_run(data, weight_decay, steps)``: the norm and angular step of a weight that BN
  makes scale-invariant.
- ``train_residual(data, zero_init, steps, lr)``: a residual MLP with γ = 1 or zero-init γ in the
  last BN of each block.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minibn import nn as mnn
from minibn.experiments.e7_convnet import PLAN, train_cnn
from minibn.experiments.progress import progress_bar
from minibn.experiments.torch_train import batches

NORMS = {"bn": "batch norm", "gn": "group norm (4 groups)", "brn": "Batch Renorm",
         "ghost": "ghost BN (virtual 8)"}
GHOST_BATCH = 8
SCHEMES = ("two-pass in {dtype}", "one-pass in {dtype}", "one-pass in float32",
           "two-pass in float32")


# ----------------------------------------------------------------------------- small batches

def make_net(norm, batch_size, warmup_steps=20, ramp_steps=50):
    """Lesson 07's convnet (``e7_convnet.PLAN``) with ``norm`` after every convolution."""

    def layer(c):
        if norm == "bn":
            return mnn.BatchNorm2d(c)
        if norm == "gn":
            return mnn.GroupNorm(4, c)
        if norm == "brn":
            # The paper's schedule, shortened: plain BN while the running statistics settle.
            return mnn.BatchRenorm2d(c, rmax=mnn.renorm_schedule(1, 3, warmup_steps, ramp_steps),
                                     dmax=mnn.renorm_schedule(0, 5, warmup_steps, ramp_steps))
        if norm == "ghost":
            return mnn.GhostBatchNorm(c, min(batch_size, GHOST_BATCH))
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")

    layers, c_in = [], 1
    for c, pool in PLAN:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), layer(c), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    side = 28 // 2 ** sum(pool for _, pool in PLAN)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, 10))


def eval_accuracy(model, x, y):
    """Accuracy in eval mode (running statistics for the batch-statistics norms)."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def small_batch_sweep(tensors, batch_sizes, steps, lr=0.05, seed=0, norms=tuple(NORMS),
                      progress=True):
    """Test accuracy (eval mode) of each normalization after ``steps`` SGD steps per batch size.

    Returns ``{norm: [accuracy per batch size]}``; the same seed gives every run the same
    initialization and the same order of images.
    """
    acc = {n: [] for n in norms}
    with progress_bar(len(norms) * len(batch_sizes), "small batches", progress) as bar:
        for bs in batch_sizes:
            for norm in norms:
                torch.manual_seed(seed)
                model = make_net(norm, bs)
                train_cnn(model, tensors, steps, lr, bs, seed)
                acc[norm].append(eval_accuracy(model, tensors[2], tensors[3]))
                bar.update()
    return acc


# ----------------------------------------------------------------------------- low precision

def variance_errors(dtype, ratios, n=4096, channels=64, seed=0):
    """Median relative error of per-channel variances, against float64, for each |mean| / std.

    The input is drawn once per ratio and rounded to ``dtype`` (a torch dtype); every scheme
    works on that same rounded input, and the reference is its exact (float64) variance, so
    the error is the statistics' alone. Returns ``{scheme: [error per ratio]}``, the schemes
    of ``SCHEMES``: mean and variance (``mean((x - mean)**2)``) in ``dtype``;
    ``mean(x**2) - mean**2`` in ``dtype``; the same one-pass formula in float32; two passes in
    float32 (what batch norm does with half-precision inputs: lesson 06's Welford point).
    An overflow gives NaN (inf - inf).
    """
    gen = torch.Generator().manual_seed(seed)
    names = [s.format(dtype=str(dtype).replace("torch.", "")) for s in SCHEMES]
    out = {name: [] for name in names}
    for r in ratios:
        x = (torch.randn(n, channels, generator=gen, dtype=torch.float64) + r).to(dtype)
        exact = x.double().var(0, unbiased=False)
        for name, wide in zip(names, (dtype, dtype, torch.float32, torch.float32)):
            v = x.to(wide)
            mean = v.mean(0)
            if name.startswith("two"):
                var = ((v - mean) ** 2).mean(0)
            else:
                var = (v * v).mean(0) - mean * mean
            out[name].append(((var.double() - exact).abs() / exact).median().item())
    return out


# ------------------------------------------------------------------- dropout before batch norm

def variance_shift(x, rates, hidden=256, width=64, batch=128, batches=40, seed=0):
    """Li et al.'s variance shift: dropout at rate p feeding a linear layer and batch norm.

    ``x`` ``(n, d)`` inputs go through a fixed random ReLU layer (features with a positive
    mean, like a hidden layer's) and, in training, inverted dropout, then a random linear layer
    into ``BatchNorm1d(width)``. Returns ``{p: (measured, predicted)}``: the median over units of
    the running variance BN learned in training divided by the variance its input has at
    inference (no dropout), and the prediction for masks independent of the features,
    ``1 + p / (1 - p) * sum_j w_jk**2 E[f_j**2] / var_eval``.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x, dtype=torch.float64)
    w1 = torch.randn(x.shape[1], hidden, generator=gen, dtype=torch.float64) / x.shape[1] ** 0.5
    w2 = torch.randn(hidden, width, generator=gen, dtype=torch.float64) / hidden ** 0.5
    feats = torch.relu(x @ w1)
    var_eval = (feats @ w2).var(0)
    second_moment = (feats ** 2).mean(0)
    out = {}
    for p in rates:
        torch.manual_seed(seed)
        bn = mnn.BatchNorm1d(width, momentum=None).double()  # cumulative average of the batches
        drop = torch.nn.Dropout(p)
        with torch.no_grad():
            for _ in range(batches):
                idx = torch.randint(0, len(feats), (batch,), generator=gen)
                bn(drop(feats[idx]) @ w2)
        measured = (bn.running_var / var_eval).median().item()
        predicted = (1 + p / (1 - p) * (w2 ** 2 * second_moment[:, None]).sum(0) / var_eval)
        out[p] = (measured, predicted.median().item())
    return out


# ------------------------------------------------------------ weight decay and scale invariance

def weight_decay_run(data, weight_decay, steps, lr=0.1, batch=128, seed=0):
    """Train 784 -> Linear(100, no bias) -> BatchNorm1d -> ReLU -> Linear(10) with SGD.

    The first layer's weight is scale-invariant (BN undoes any scaling of it), so only its
    direction matters. Returns per step the weight's norm and its *angular* step
    ``|| w'/||w'|| - w/||w|| ||`` (how far the direction moved), and the final test accuracy.
    The effective learning rate of van Laarhoven 2017 is ``lr / norm**2``.
    """
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x_train.shape[1], 100, bias=False), mnn.BatchNorm1d(100),
                          nn.ReLU(), nn.Linear(100, 10))
    w = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    norms, angular = [], []
    # Its own loop rather than e7's train_cnn: the angle is measured around every step.
    for idx in batches(len(x_train), batch, steps, gen):
        before = (w / w.norm()).detach().clone()
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            norm = w.norm().item()
            norms.append(norm)
            angular.append((w / norm - before).norm().item())
    return {"norm": np.array(norms), "angular": np.array(angular),
            "test_accuracy": eval_accuracy(model, x_test, y_test)}


# -------------------------------------------------------------- zero-init gamma in residual nets

class ResidualBlock(nn.Module):
    """``relu(x + BN(W2 relu(BN(W1 x))))``; ``zero_init`` sets the last BN's scale to 0."""

    def __init__(self, width, zero_init):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width, bias=False), mnn.BatchNorm1d(width),
                                    nn.ReLU(), nn.Linear(width, width, bias=False),
                                    mnn.BatchNorm1d(width))
        if zero_init:
            nn.init.zeros_(self.branch[-1].weight)

    def forward(self, x):
        return torch.relu(x + self.branch(x))


def residual_net(zero_init, depth=8, width=64, inputs=784, classes=10):
    """An MLP ResNet of ``depth`` ``ResidualBlock``s; with ``zero_init`` (Goyal et al. 2017)
    every block starts as the identity."""
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(),
                         *[ResidualBlock(width, zero_init) for _ in range(depth)],
                         nn.Linear(width, classes))


def train_residual(data, zero_init, steps, lr, batch=128, seed=0):
    """SGD on ``residual_net(zero_init)`` from seed ``seed``; returns the loss per step (stopped
    at the first non-finite one) and the final test accuracy in eval mode."""
    torch.manual_seed(seed)
    model = residual_net(zero_init, inputs=data[0].shape[1])
    out = train_cnn(model, data, steps, lr, batch, seed)
    return {"loss": np.array(out["loss"]), "test_accuracy": eval_accuracy(model, data[2], data[3])}

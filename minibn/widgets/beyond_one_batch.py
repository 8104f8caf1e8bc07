"""Lesson 09 helpers and explorer: normalization at small batches, in low precision, over processes.

- ``small_batch_sweep(tensors, batch_sizes, steps)`` trains lesson 07's convnet with batch norm,
  group norm, Batch Renorm and ghost batch norm at each batch size and returns their test
  accuracies in eval mode (running statistics, as deployed); ``batch_size_explorer(sweep)``
  shows them one batch size at a time.
- ``variance_errors(dtype, ratios)``: the relative error of the per-channel variance when the
  statistics are computed in ``dtype`` (two-pass and one-pass) or in float32, against float64.
- ``gloo_merge(rank, world_size, merge_source, shards)``: one process's part of lesson 09's
  distributed cell, run by ``minibn.nn.run_distributed``.
- ``variance_shift(x, rates)``: dropout before batch norm, running vs inference-time variance.
- ``weight_decay_run(data, weight_decay, steps)``: the norm and angular step of a weight that BN
  makes scale-invariant.
- ``train_residual(data, zero_init, steps, lr)``: a residual MLP with γ = 1 or zero-init γ in the
  last BN of each block.
"""
from __future__ import annotations

import numpy as np

from minibn.widgets import explore

__all__ = ["NORMS", "SCHEMES", "batch_size_explorer", "gloo_merge", "make_net", "plot_sweep",
           "plot_variance_errors", "plot_weight_decay", "residual_net", "small_batch_sweep",
           "train_residual", "variance_errors", "variance_shift", "weight_decay_run"]

NORMS = {"bn": "batch norm", "gn": "group norm (4 groups)", "brn": "Batch Renorm",
         "ghost": "ghost BN (virtual 8)"}
GHOST_BATCH = 8


def make_net(norm, batch_size, warmup_steps=20, ramp_steps=50):
    """Lesson 07's convnet (``e7_convnet.PLAN``) with ``norm`` after every convolution."""
    from torch import nn

    from minibn import nn as mnn
    from minibn.experiments.e7_convnet import PLAN

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


def small_batch_sweep(tensors, batch_sizes, steps, lr=0.05, seed=0, norms=tuple(NORMS),
                      progress=True):
    """Test accuracy (eval mode) of each normalization after ``steps`` SGD steps per batch size.

    Returns ``{"batch_sizes": [...], "steps": steps, "acc": {norm: [...]}, "train_acc": ...}``;
    the same seed gives every run the same initialization and the same order of images.
    """
    import torch

    from minibn.experiments.e7_convnet import train_cnn
    from minibn.experiments.progress import progress_bar

    x_test, y_test = tensors[2], tensors[3]
    acc = {n: [] for n in norms}
    bar = progress_bar(len(norms) * len(batch_sizes), "small batches", enabled=progress)
    for bs in batch_sizes:
        for norm in norms:
            torch.manual_seed(seed)
            model = make_net(norm, bs)
            train_cnn(model, tensors, steps, lr, bs, seed)
            model.eval()
            with torch.no_grad():
                acc[norm].append((model(x_test).argmax(1) == y_test).float().mean().item())
            bar.update(1)
    bar.close()
    return {"batch_sizes": list(batch_sizes), "steps": steps, "acc": acc}


def plot_sweep(sweep, batch_size=None, ax=None):
    """Accuracy against batch size, one line per normalization (a marker at ``batch_size``)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.6))
    sizes = sweep["batch_sizes"]
    for i, (norm, accs) in enumerate(sweep["acc"].items()):
        ax.plot(sizes, accs, "o-", color=f"C{i}", label=NORMS[norm])
    if batch_size is not None:
        ax.axvline(batch_size, color="0.6", ls="--")
    ax.set(xscale="log", xlabel="batch size (log scale)", ylabel="test accuracy (eval mode)",
           title=f"lesson 07's convnet, {sweep['steps']} SGD steps per run")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()  # log-scale minor labels (3x10^0...) would crowd the batch sizes
    ax.legend(fontsize=8)
    return ax.figure


def batch_size_explorer(sweep):
    """A slider over the measured batch sizes: the curves, and that batch size's bars."""
    import ipywidgets as w

    def draw(batch_size):
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), width_ratios=(3, 2))
        plot_sweep(sweep, batch_size, left)
        i = sweep["batch_sizes"].index(batch_size)
        accs = [sweep["acc"][n][i] for n in sweep["acc"]]
        bars = right.bar([NORMS[n].split(" (")[0] for n in sweep["acc"]], accs,
                         color=[f"C{k}" for k in range(len(accs))])
        right.bar_label(bars, fmt="%.3f")
        right.set(ylim=(0, 1.05), title=f"batch size {batch_size}")
        right.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        plt.show()

    sizes = sweep["batch_sizes"]
    explore(draw, batch_size=w.SelectionSlider(options=sizes, value=sizes[0],
                                               description="batch size"))


# --------------------------------------------------------------------------- low precision

SCHEMES = ("two-pass in {dtype}", "one-pass in {dtype}", "one-pass in float32",
           "two-pass in float32")


def variance_errors(dtype, ratios, n=4096, channels=64, seed=0):
    """Median relative error of per-channel variances, against float64, for each |mean| / std.

    The input is drawn once per ratio and rounded to ``dtype`` (a torch dtype); every scheme
    works on that same rounded input, and the reference is its exact (float64) variance, so
    the error is the statistics' alone. Returns ``{scheme: [error per ratio]}``, the schemes
    of ``SCHEMES``: mean and variance (``mean((x - mean)**2)``) in ``dtype``;
    ``mean(x**2) - mean**2`` in ``dtype``; the same one-pass formula in float32; two passes in
    float32 (what batch norm does with half-precision inputs: lesson 06's Welford point).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    names = [s.format(dtype=str(dtype).replace("torch.", "")) for s in SCHEMES]
    out = {name: [] for name in names}
    for ratio in ratios:
        x = (torch.randn(n, channels, generator=gen, dtype=torch.float64) + ratio).to(dtype)
        exact = x.double().var(0, unbiased=False)
        for name, wide in zip(names, (dtype, dtype, torch.float32, torch.float32)):
            v = x.to(wide)
            mean = v.mean(0)
            if name.startswith("two"):
                var = ((v - mean) ** 2).mean(0)
            else:
                var = (v * v).mean(0) - mean * mean
            err = ((var.double() - exact).abs() / exact).median().item()
            out[name].append(err)
    return out


def plot_variance_errors(ratios, errors_by_dtype):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(errors_by_dtype), figsize=(11, 3.4), sharey=True)
    for ax, (dtype, errors) in zip(np.atleast_1d(axes), errors_by_dtype.items()):
        for i, (name, errs) in enumerate(errors.items()):
            ax.plot(np.maximum(ratios, 0.1), np.maximum(errs, 1e-10), "o-", color=f"C{i}",
                    label=name)
        ax.set(xscale="log", yscale="log", xlabel="|mean| / std  (0 drawn at 0.1)",
               title=f"inputs in {dtype}")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("median relative error of var")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- distributed

def gloo_merge(rank, world_size, merge_source, shards):
    """One rank of the distributed cell: all-gather every rank's (count, mean, M2), fold them
    with the learner's ``merge_moments`` (sent as source: a spawned process cannot import a
    notebook), and run ``minibn.nn.SyncBatchNorm`` on the same share for comparison.

    Returns ``{"merged": (count, mean, m2), "sync_mean", "sync_var"}`` (SyncBN's running
    statistics after one step with momentum 1: the global mean and unbiased variance).
    """
    import torch

    from minibn.checks.beyond_one_batch import shard_moments
    from minibn.nn import SyncBatchNorm

    namespace = {"np": np}
    exec(merge_source, namespace)  # noqa: S102 - the learner's own function, in their own process
    merge_moments = namespace["merge_moments"]
    shard = shards[rank]
    count, mean, m2 = shard_moments(shard)
    c = shard.shape[1]
    packed = torch.from_numpy(np.concatenate([[count], mean, m2]))
    gathered = [torch.empty_like(packed) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, packed)
    triples = [(int(t[0]), t[1:c + 1].numpy(), t[c + 1:].numpy()) for t in gathered]
    merged = triples[0]
    for t in triples[1:]:
        merged = merge_moments(merged, t)
    bn = SyncBatchNorm(c, momentum=1.0).double()
    bn(torch.from_numpy(shard))
    return {"merged": (int(merged[0]), np.asarray(merged[1]), np.asarray(merged[2])),
            "sync_mean": bn.running_mean.numpy(), "sync_var": bn.running_var.numpy()}


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
    import torch

    from minibn import nn as mnn

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
    direction matters. Returns per step the weight's norm, its *angular* step
    ``|| w'/||w'|| - w/||w|| ||`` (how far the direction moved) and ``lr / ||w||**2`` (the effective
    learning rate of van Laarhoven 2017), and the final test accuracy.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from minibn import nn as mnn
    from minibn.experiments.torch_train import batches

    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x_train.shape[1], 100, bias=False), mnn.BatchNorm1d(100),
                          nn.ReLU(), nn.Linear(100, 10))
    w = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    norms, angular, effective = [], [], []
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
            effective.append(lr / norm ** 2)
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"norm": np.array(norms), "angular": np.array(angular),
            "effective_lr": np.array(effective), "test_accuracy": acc}


def plot_weight_decay(runs, lr):
    """The scale-invariant weight's norm and angular step over training, one line per decay."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4))
    for i, (wd, run) in enumerate(runs.items()):
        steps = np.arange(1, len(run["norm"]) + 1)
        left.plot(steps, run["norm"], color=f"C{i}", label=f"weight decay {wd:g}")
        window = min(25, len(steps))
        smooth = np.convolve(run["angular"], np.ones(window) / window, mode="valid")
        right.plot(steps[window - 1:], smooth, color=f"C{i}", label=f"measured, decay {wd:g}")
        # Scale invariance: the angular step is ||grad|| * lr / ||w||, and ||grad|| itself goes as
        # 1 / ||w||, so it moves with lr / ||w||^2 (drawn rescaled to the first measured value).
        predicted = run["effective_lr"] * smooth[0] / run["effective_lr"][window - 1]
        right.plot(steps, predicted, color=f"C{i}", ls=":", alpha=0.7)
    left.set(xlabel="step", ylabel="||W|| of the layer before BN", title="the weight's norm")
    right.set(xlabel="step", ylabel="angular step (25-step mean)", yscale="log",
              title=f"how far its direction moves per step (lr {lr:g}; dotted: ∝ lr/||W||²)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------- zero-init gamma in residual nets

def residual_net(zero_init, depth=8, width=64, inputs=784, classes=10):
    """An MLP ResNet: ``depth`` blocks ``relu(x + BN(W2 relu(BN(W1 x))))``; ``zero_init`` sets
    the scale of each block's last BN to 0 (Goyal et al. 2017), so every block starts as the
    identity."""
    import torch
    from torch import nn

    from minibn import nn as mnn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch = nn.Sequential(nn.Linear(width, width, bias=False), mnn.BatchNorm1d(width),
                                        nn.ReLU(), nn.Linear(width, width, bias=False),
                                        mnn.BatchNorm1d(width))
            if zero_init:
                nn.init.zeros_(self.branch[-1].weight)

        def forward(self, x):
            return torch.relu(x + self.branch(x))

    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), *[Block() for _ in range(depth)],
                         nn.Linear(width, classes))


def train_residual(data, zero_init, steps, lr, batch=128, seed=0):
    """SGD on ``residual_net(zero_init)`` from seed ``seed``; returns the loss per step (stopped
    at the first non-finite one) and the final test accuracy in eval mode."""
    import math

    import torch
    import torch.nn.functional as F

    from minibn.experiments.torch_train import batches

    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = residual_net(zero_init)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for idx in batches(len(x_train), batch, steps, torch.Generator().manual_seed(seed)):
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"loss": np.array(losses), "test_accuracy": acc}

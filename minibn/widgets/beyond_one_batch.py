"""Lesson 09's figures and explorer; its measurements are experiment E8 (``e8_beyond_one_batch``).

- ``plot_sweep(sweep)`` and ``batch_size_explorer(sweep)``: the small-batch sweep's test
  accuracies against batch size, and one batch size at a time (``e8_beyond_one_batch.sweep``).
- ``plot_variance_errors``, ``plot_variance_shift``, ``plot_weight_decay``, ``plot_residual``:
  the other sections' figures, each from E8's ``Result``.
- ``gloo_merge(rank, world_size, merge_source, shards)``: one process's part of lesson 09's
  distributed cell, run by ``minibn.nn.run_distributed``.
"""
from __future__ import annotations

import numpy as np

from minibn.experiments.e8_sections import NORMS
from minibn.widgets import explore

__all__ = ["NORMS", "batch_size_explorer", "gloo_merge", "plot_residual", "plot_sweep",
           "plot_variance_errors", "plot_variance_shift", "plot_weight_decay"]


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

def plot_variance_errors(result):
    """Median relative error of the variance against |mean| / std, one panel per 16-bit dtype."""
    import matplotlib.pyplot as plt

    from minibn.experiments.e8_beyond_one_batch import variance_table

    ratios = result.config["ratios"]
    table = variance_table(result)
    fig, axes = plt.subplots(1, len(table), figsize=(11, 3.4), sharey=True)
    for ax, (dtype, errors) in zip(np.atleast_1d(axes), table.items()):
        for i, (name, errs) in enumerate(errors.items()):
            ax.plot(np.maximum(ratios, 0.1), np.maximum(errs, 1e-10), "o-", color=f"C{i}",
                    label=name)
        ax.set(xscale="log", yscale="log", xlabel="|mean| / std  (0 drawn at 0.1)",
               title=f"inputs in {dtype}")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("median relative error of var")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------- dropout before batch norm

def plot_variance_shift(result):
    """BN's running variance over the inference variance, measured and predicted, per rate."""
    import matplotlib.pyplot as plt

    rates = result.config["dropout_rates"]
    at = np.arange(len(rates))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.bar(at - 0.2, result.curves["shift_measured"]["y"], 0.4, label="measured")
    ax.bar(at + 0.2, result.curves["shift_predicted"]["y"], 0.4, label="predicted (formula)")
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set(xticks=at, xticklabels=[f"p = {p}" for p in rates],
           ylabel="running var / inference var", title="BN's variance shift after dropout")
    ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------ weight decay and scale invariance

def plot_weight_decay(result):
    """The scale-invariant weight's norm and angular step over training, one line per decay."""
    import matplotlib.pyplot as plt

    lr = result.config["wd_lr"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4))
    for i, wd in enumerate(result.config["weight_decays"]):
        norm = np.array(result.curves[f"wd{wd:g}_norm"]["y"])
        angular = np.array(result.curves[f"wd{wd:g}_angular"]["y"])
        steps = np.arange(1, len(norm) + 1)
        left.plot(steps, norm, color=f"C{i}", label=f"weight decay {wd:g}")
        window = min(25, len(steps))
        smooth = np.convolve(angular, np.ones(window) / window, mode="valid")
        right.plot(steps[window - 1:], smooth, color=f"C{i}", label=f"measured, decay {wd:g}")
        # Scale invariance: the angular step is ||grad|| * lr / ||w||, and ||grad|| itself goes as
        # 1 / ||w||, so it moves with lr / ||w||^2 (drawn rescaled to the first measured value).
        effective = lr / norm ** 2
        right.plot(steps, effective * smooth[0] / effective[window - 1], color=f"C{i}", ls=":",
                   alpha=0.7)
    left.set(xlabel="step", ylabel="||W|| of the layer before BN", title="the weight's norm")
    right.set(xlabel="step", ylabel="angular step (25-step mean)", yscale="log",
              title=f"how far its direction moves per step (lr {lr:g}; dotted: ∝ lr/||W||²)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------- zero-init gamma in residual nets

def plot_residual(result):
    """Training loss per step of the residual net, γ = 1 against zero-init γ."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for tag, label in (("gamma1", "γ = 1"), ("zero", "zero-init γ")):
        cur = result.curves[f"res_loss_{tag}"]
        ax.plot(cur["x"], cur["y"], label=label)
    ax.set(yscale="log", xlabel="step", ylabel="training loss (log scale)",
           title=f"8 residual blocks, SGD at lr {result.config['res_lr']:g}")
    ax.legend()
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

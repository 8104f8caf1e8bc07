"""E6: Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm": population statistics.

At inference BN normalizes with *population* statistics instead of the batch's. How they are
estimated, and how the evaluation batches are formed, matter:

- R1, EMA vs PreciseBN: frameworks track an exponential moving average (EMA) of batch
  statistics while training; with a large lambda it averages statistics of many *old* weights.
  PreciseBN freezes the model and pools the statistics of a few batches (10^3-10^4 samples).
- R2, batch composition: evaluating with *batch* statistics on non-i.i.d. batches (sorted by
  class, as the MNIST-5k file is) destroys accuracy; population statistics do not care.
- R3, normalization batch size: ghost BN normalizes over groups of G inside each SGD batch. The
  smaller G, the larger the train-test inconsistency between mini-batch and population
  statistics; G = 2 collapses (each normalized feature is +-1); LayerNorm does not depend on G.

Nets: ``minibn.experiments.torch_mlp.MLP`` (ReLU, He init) on MNIST-5k (4,000 train / 1,000
test). Setups and pass criteria: docs/reproductions.md, E6.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from minibn.conventions import unbiased_variance, update_running_stat
from minibn.experiments.progress import progress_bar
from minibn.experiments.torch_mlp import MLP
from minibn.experiments.torch_train import (accuracy, batch_moments, batches, load_data,
                                            precise_bn, sgd_step, train_mode_moments)
from minibn.experiments.result import Check, Result, claim, ratio, unasserted_if_changed

EMA_LAMBDAS = (0.9, 0.99, 0.999)


# ---------------------------------------------------------------------------------------------
# Estimators of population statistics from batch statistics
# ---------------------------------------------------------------------------------------------

def bessel_estimate(means, variances, m):
    """BN paper Algorithm 2: E[mu_B] and m/(m-1) * E[var_B] over batches of size ``m``.

    ``means``/``variances``: per-batch means and biased variances, sequences of (D,) tensors.
    The biased batch variance underestimates the population variance by (m - 1)/m on average;
    the factor m/(m-1) undoes that.
    """
    if m < 2:
        raise ValueError(f"batch size m must be at least 2 for m/(m-1), got {m}")
    mean_var = torch.stack(list(variances)).mean(0)
    return torch.stack(list(means)).mean(0), unbiased_variance(mean_var, m)


class EMA:
    """Running statistics with decay ``lam`` (torch's ``momentum = 1 - lam``), from mean 0, var 1.

    ``update`` takes one training batch's per-layer (mean, biased var) and its size m, and
    tracks the unbiased variance (m/(m-1)), as torch's BatchNorm does.
    """

    def __init__(self, lam, widths):
        self.lam = lam
        self.stats = [(torch.zeros(w, dtype=torch.float64), torch.ones(w, dtype=torch.float64))
                      for w in widths]

    def update(self, moments, m):
        momentum = 1 - self.lam
        for (mean, var), (mu, v) in zip(self.stats, moments):
            update_running_stat(mean, mu, momentum)
            update_running_stat(var, unbiased_variance(v, m), momentum)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

def _train(model, data, steps, lr, batch, gen, on_step=None, progress=True, desc="train"):
    """SGD on ``data``'s training set; ``lr(step)``; ``on_step(step, taps)`` after each step."""
    x_train, y_train = data[0], data[1]
    with progress_bar(steps, desc, progress) as bar:
        for t, idx in enumerate(batches(len(x_train), batch, steps, gen), start=1):
            taps = []
            loss = F.cross_entropy(model.forward(x_train[idx], taps=taps), y_train[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {float(loss)} at step {t}")
            sgd_step(model.params, torch.autograd.grad(loss, model.params), lr(t))
            if on_step is not None:
                on_step(t, taps)
            bar.update()


# ---------------------------------------------------------------------------------------------
# R1, R2, R3
# ---------------------------------------------------------------------------------------------

SCALE_KEYS = ("r1", "r2", "r3")


def config(fast=True, seed=0, **overrides):
    """Fast mode shortens R1 and R3 and drops G = 16 and 64 from R3's sweep; ``overrides``
    replace any top-level setting."""
    return {
        "r1": {"depth": 6, "width": 100, "batch": 128, "lr_high": 1.0, "lr_low": 0.1,
               "high_steps": 800 if fast else 3600, "low_steps": 200 if fast else 900,
               "probe_every": 50 if fast else 100, "precise_batches": 10, "precise_batch": 100,
               "eval_batch": 200, "ema": list(EMA_LAMBDAS)},
        "r2": {"depth": 3, "width": 100, "batch": 60, "lr": 0.1, "steps": 1500 if fast else 4500,
               "eval_batch": 100},
        "r3": {"depth": 6, "width": 100, "batch": 128, "lr": 0.1, "steps": 1000 if fast else 4500,
               "decay_at": 0.8, "groups": [2, 4, 8, 32, 128] if fast
               else [2, 4, 8, 16, 32, 64, 128]},
        "seed": seed, "fast": fast, **overrides,
    }


def _model(data, cfg, norm, gen, group=None):
    sizes = [data[0].shape[1]] + [cfg["width"]] * cfg["depth"] + [10]
    return MLP(sizes, norm=norm, init="he", group=group, generator=gen)


def run_r1(data, cfg, seed, progress=True):
    """EMA(lambda) vs PreciseBN vs exact population vs batch statistics, probed while training."""
    x_train, y_train, x_test, y_test = data
    gen = torch.Generator().manual_seed(seed)
    model = _model(data, cfg, "bn", gen)
    emas = [EMA(lam, [cfg["width"]] * cfg["depth"]) for lam in cfg["ema"]]
    stat_gen = torch.Generator().manual_seed(seed + 1)
    rec = {"step": [], "exact": [], "precise": [], "batch": []}
    rec.update({f"ema_{lam}": [] for lam in cfg["ema"]})

    def probe(t):
        exact = [(m, unbiased_variance(v, len(x_train)))
                 for m, v in train_mode_moments(model, x_train)]
        precise = precise_bn(model, x_train, cfg["precise_batch"], stat_gen, cfg["precise_batches"])
        rec["step"].append(t)
        rec["exact"].append(accuracy(model, x_test, y_test, exact))
        rec["precise"].append(accuracy(model, x_test, y_test, precise))
        rec["batch"].append(accuracy(model, x_test, y_test, batch_size=cfg["eval_batch"]))
        for ema in emas:
            rec[f"ema_{ema.lam}"].append(accuracy(model, x_test, y_test, ema.stats))

    def on_step(t, taps):
        moments = [batch_moments(h) for h, _ in taps]
        for ema in emas:
            ema.update(moments, cfg["batch"])
        if t % cfg["probe_every"] == 0:
            probe(t)

    high = cfg["high_steps"]
    _train(model, data, high + cfg["low_steps"], lambda t: cfg["lr_high"] if t <= high
           else cfg["lr_low"], cfg["batch"], gen, on_step, progress, "R1 EMA vs PreciseBN")
    return rec


def run_r2(data, cfg, seed, progress=True):
    """Test accuracy with class-sorted vs shuffled evaluation batches, and population stats."""
    x_train, y_train, x_test, y_test = data
    gen = torch.Generator().manual_seed(seed)
    model = _model(data, cfg, "bn", gen)
    _train(model, data, cfg["steps"], lambda t: cfg["lr"], cfg["batch"], gen, None, progress,
           "R2 batch composition")
    order = torch.argsort(y_test, stable=True)
    population = precise_bn(model, x_train, cfg["batch"], gen)
    size = cfg["eval_batch"]
    return {"sorted_batch": accuracy(model, x_test[order], y_test[order], batch_size=size),
            "shuffled_batch": accuracy(model, x_test, y_test, batch_size=size),
            "population": accuracy(model, x_test, y_test, population)}


def _errors(model, data, cfg, gen, norm):
    """Train/val error with mini-batch statistics (batches of the SGD size, ghost groups inside)
    and, for BN, with population statistics pooled over the whole training set."""
    x_train, y_train, x_test, y_test = data
    b = cfg["batch"]
    n = len(x_train) // b * b  # whole SGD batches only, so every ghost group is full
    out = {"train_batch": 1 - accuracy(model, x_train[:n], y_train[:n], batch_size=b),
           "val_batch": 1 - accuracy(model, x_test[:len(x_test) // b * b],
                                     y_test[:len(x_test) // b * b], batch_size=b)}
    if norm == "ln":  # per-sample statistics: the same in training and inference
        out["train_pop"], out["val_pop"] = (1 - accuracy(model, x_train, y_train),
                                            1 - accuracy(model, x_test, y_test))
    else:
        population = precise_bn(model, x_train, b, gen)
        out["train_pop"] = 1 - accuracy(model, x_train, y_train, population)
        out["val_pop"] = 1 - accuracy(model, x_test, y_test, population)
    return out


def run_r3(data, cfg, seed, progress=True):
    """Ghost BN over groups of G (and LayerNorm) in SGD batches of 128; errors per G."""
    decay = int(cfg["decay_at"] * cfg["steps"])
    results = {}
    for g in cfg["groups"] + ["ln"]:
        gen = torch.Generator().manual_seed(seed)
        norm = "ln" if g == "ln" else "ghost"
        model = _model(data, cfg, norm, gen, None if g == "ln" else g)
        _train(model, data, cfg["steps"], lambda t: cfg["lr"] if t <= decay else cfg["lr"] / 10,
               cfg["batch"], gen, None, progress, "R3 LayerNorm" if g == "ln" else f"R3 G={g}")
        results[str(g)] = _errors(model, data, cfg, gen, norm)
    return results


def run(cfg, progress=True):
    """R1-R3 on one data split; returns a Result with claims R1a, R1b, R2, R3a, R3b."""
    seed = cfg["seed"]
    torch.manual_seed(seed)
    data = load_data(seed)
    curves, summary = {}, {}
    r1 = run_r1(data, cfg["r1"], seed, progress)
    high = [i for i, t in enumerate(r1["step"]) if t <= cfg["r1"]["high_steps"]]
    for key in [k for k in r1 if k != "step"]:
        curves[f"r1/{key}"] = {"x": r1["step"], "y": r1[key]}
        summary[f"r1/{key}/high_lr_mean"] = float(np.mean([r1[key][i] for i in high]))
        summary[f"r1/{key}/final"] = r1[key][-1]
    summary["r1/precise_vs_exact_max_gap"] = float(max(abs(a - b) for a, b in
                                                       zip(r1["precise"], r1["exact"])))
    for key, acc in run_r2(data, cfg["r2"], seed, progress).items():
        summary[f"r2/{key}"] = acc
    r3 = run_r3(data, cfg["r3"], seed, progress)
    for g, errs in r3.items():
        for key, err in errs.items():
            summary[f"r3/{g}/{key}"] = err
    for key in ("train_batch", "train_pop", "val_batch", "val_pop"):
        groups = cfg["r3"]["groups"]
        curves[f"r3/{key}"] = {"x": groups, "y": [r3[str(g)][key] for g in groups]}
    result = Result("population_stats", cfg, curves, summary)
    result.claims = claims(result)
    return result


def r3_gaps(summary, groups):
    """Train error with mini-batch stats minus with population stats, per G >= 4 (G = 2 has
    collapsed: both errors are near chance)."""
    return {g: summary[f"r3/{g}/train_batch"] - summary[f"r3/{g}/train_pop"]
            for g in groups if g >= 4}


def claims(result):
    """R1a, R1b, R2, R3a, R3b (asserted) and R1c, R3c (reported): docs/reproductions.md."""
    s, cfg = result.summary, result.config
    asserted = unasserted_if_changed(cfg, config(cfg["fast"], cfg["seed"]), SCALE_KEYS)
    lams = cfg["r1"]["ema"]
    means = {k: s[f"r1/{k}/high_lr_mean"] for k in ["exact", "precise", "batch"]
             + [f"ema_{lam}" for lam in lams]}
    worst_ema = f"ema_{max(lams)}"
    gaps = r3_gaps(s, cfg["r3"]["groups"])
    gs = sorted(gaps)
    # "monotonically": each larger G has a smaller gap, up to half a point of evaluation noise
    rise = max(gaps[b] - gaps[a] for a, b in zip(gs, gs[1:]))
    ln_val, g2_val = s["r3/ln/val_pop"], s["r3/2/val_pop"]
    return [
        claim("R1a", "PreciseBN (10^3 samples) gives the population statistics' accuracy",
              "Wu & Johnson 2021, Sec. 3",
              f"mean test accuracy over high-lr probes: PreciseBN {means['precise']:.3f}, exact "
              f"{means['exact']:.3f}; worst single probe gap "
              f"{s['r1/precise_vs_exact_max_gap']:.3f}",
              "PreciseBN within 1 point of exact population stats (mean over high-lr probes)",
              [Check("|PreciseBN - exact| mean accuracy (points)",
                     100 * abs(means["precise"] - means["exact"]), "<=", 1)], asserted),
        claim("R1b", "EMA with a large lambda keeps stale statistics and loses accuracy",
              "Wu & Johnson 2021, Sec. 3",
              "mean test accuracy over high-lr probes: "
              + ", ".join(f"EMA {lam} {means[f'ema_{lam}']:.3f}" for lam in lams)
              + f", batch stats {means['batch']:.3f}",
              f"EMA({max(lams)}) >= 5 points below PreciseBN",
              [Check(f"PreciseBN - EMA({max(lams)}) mean accuracy (points)",
                     100 * (means["precise"] - means[worst_ema]), ">=", 5)], asserted),
        claim("R1c", "EMA(0.9) is suboptimal at large batch",
              "Wu & Johnson 2021, Sec. 3 (ImageNet, batch 8192)",
              f"EMA 0.9 {means['ema_0.9']:.3f} vs PreciseBN {means['precise']:.3f}",
              "EMA(0.9) >= 1 point below PreciseBN",
              [Check("PreciseBN - EMA(0.9) mean accuracy (points)",
                     100 * (means["precise"] - means["ema_0.9"]), ">=", 1)],
              "reported, not asserted: needs large-batch ImageNet dynamics"),
        claim("R2", "Batch statistics on non-i.i.d. evaluation batches break a BN model",
              "Wu & Johnson 2021, Sec. 6; Ioffe & Szegedy 2015, Sec. 3.1",
              f"test accuracy: class-sorted batches of {cfg['r2']['eval_batch']} with batch "
              f"stats {s['r2/sorted_batch']:.3f}, shuffled {s['r2/shuffled_batch']:.3f}, "
              f"population stats {s['r2/population']:.3f}",
              "sorted batch-stat accuracy < 0.5 and population-stat accuracy >= 0.9",
              [Check("sorted-batch accuracy with batch stats", s["r2/sorted_batch"], "<", 0.5),
               Check("accuracy with population stats", s["r2/population"], ">=", 0.9)], asserted),
        claim("R3a", "The smaller the normalization batch, the larger the train-test inconsistency",
              "Wu & Johnson 2021, Sec. 4",
              "train error, mini-batch minus population stats: "
              + ", ".join(f"G={g} {gaps[g]:+.3f}" for g in gs),
              "the gap shrinks monotonically with G (0.5-point tolerance)",
              [Check("largest rise of the gap from one G to the next (points)", 100 * rise,
                     "<=", 0.5)], asserted),
        claim("R3b", "BN over 2 samples collapses; LayerNorm does not depend on the batch",
              "Wu & Johnson 2021, Sec. 4; Wu & He 2018",
              f"val error with population stats: G=2 {g2_val:.3f}, LayerNorm {ln_val:.3f}",
              "G=2 val error > 3x LayerNorm's",
              [Check("G=2 / LayerNorm val error", ratio(g2_val, ln_val), ">", 3)], asserted),
        claim("R3c", "At small normalization batches, mini-batch statistics beat population "
              "statistics at inference", "Wu & Johnson 2021, Sec. 4",
              "val error mini-batch / population stats: "
              + ", ".join(f"G={g} {s[f'r3/{g}/val_batch']:.3f}/{s[f'r3/{g}/val_pop']:.3f}"
                          for g in cfg["r3"]["groups"]),
              "at G=4 mini-batch val error < population val error",
              [Check("G=4 val error, population - mini-batch stats (points)",
                     100 * (s["r3/4/val_pop"] - s["r3/4/val_batch"]), ">", 0)],
              "reported, not asserted: population stats won at every G in this MLP"),
    ]


def plot(result):
    """R1 accuracy per probe for every kind of statistics; R3 errors against G."""
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(12, 4))
    labels = {"exact": "exact population", "precise": "PreciseBN (1000 samples)",
              "batch": f"batch stats ({cfg['r1']['eval_batch']})"}
    labels.update({f"ema_{lam}": f"EMA λ={lam}" for lam in cfg["r1"]["ema"]})
    for key, label in labels.items():
        c = result.curves[f"r1/{key}"]
        ax1.plot(c["x"], c["y"], marker="o", ms=2, label=label)
    ax1.axvline(cfg["r1"]["high_steps"], color="gray", ls=":", lw=1)
    ax1.set(xlabel="step", ylabel="test accuracy", ylim=(0.5, 1.0),
            title="R1: statistics used at inference (lr drop at the dotted line)")
    ax1.legend(fontsize=8)
    styles = {"train_batch": "train, mini-batch stats", "train_pop": "train, population stats",
              "val_batch": "val, mini-batch stats", "val_pop": "val, population stats"}
    for key, label in styles.items():
        c = result.curves[f"r3/{key}"]
        ax3.plot(c["x"], c["y"], marker="o", label=label)
    ax3.axhline(result.summary["r3/ln/val_pop"], color="gray", ls="--", label="val, LayerNorm")
    ax3.set_yscale("symlog", linthresh=0.01)  # train errors reach exactly 0 at large G
    ax3.set(xscale="log", ylim=(0, 1), xlabel="normalization batch size G", ylabel="error",
            title="R3: normalization batch size (ghost BN)")
    ax3.set_xticks(cfg["r3"]["groups"], [str(g) for g in cfg["r3"]["groups"]])
    ax3.legend(fontsize=8)
    fig.tight_layout()
    return [fig]

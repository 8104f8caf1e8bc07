"""E5: Bjorck et al. 2018: BN's main gift is that it trains at much larger learning rates.

Setup (docs/reproductions.md, E5): a deep ReLU MLP 784-(100x10)-10, He init, plain SGD, batch 128,
a constant learning rate from {0.01, 0.03, 0.1, 0.3, 1, 3, 10}, with and without BN, 1000 steps
(2000 in full mode). A run *diverges* when its loss becomes NaN/inf. Train accuracy is over all
4,000 training images, test accuracy over the 1,000 held-out ones, BN evaluated with population
statistics of 1,000 training images.

Also the paper's BN-x5-Sigmoid point in miniature: the same deep net with sigmoids, with and
without BN, at one large learning rate (reported, not asserted: no criterion for it was
calibrated).
"""
from __future__ import annotations

import math

import numpy as np

from minibn.data import load_mnist
from minibn.experiments.numpy_mlp import MLP, make_rng
from minibn.experiments.numpy_train import accuracy, set_population_stats, train
from minibn.experiments.progress import progress_bar
from minibn.experiments.result import Check, Result, claim, unasserted_if_changed, usable_lrs

NAME = "learning_rates"
SIZES = [784] + [100] * 10 + [10]
LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


# The asserted claims read the ReLU runs at lr 0.01, 1 and 3 only.
CALIBRATION = {"lrs": [0.01, 1.0, 3.0], "sigmoid": False}
SCALE_KEYS = ("steps", "batch_size", "init", "precise_bn_samples")


def config(fast=True, seed=0, **overrides):
    """The run's settings; ``overrides`` replace any (``lrs``: the sweep, which the claims
    need to include 0.01, 1 and 3; ``sigmoid``: also train the sigmoid pair)."""
    return {"steps": 1000 if fast else 2000, "batch_size": 128, "lrs": list(LRS), "init": "he",
            "sigmoid": True, "sigmoid_lr": 1.0, "precise_bn_samples": 1000, "seed": seed,
            "fast": fast, **overrides}


def train_one(data, batchnorm, lr, cfg, seed, activation="relu", progress=False):
    """Train one net at one constant ``lr``; return a dict of its outcome."""
    rng = make_rng(seed)
    model = MLP(SIZES, activation, batchnorm=batchnorm, init=cfg["init"], rng=rng)
    hist = train(model, data.x_train, data.y_train, steps=cfg["steps"], lr=lr,
                 batch_size=cfg["batch_size"], rng=rng, progress=progress,
                 desc=f"{'BN' if batchnorm else 'plain'} {activation} lr={lr:g}")
    out = {"loss": hist["loss"], "diverged_at": hist["diverged_at"]}
    if hist["diverged_at"] is not None:
        out.update(train_acc=math.nan, test_acc=math.nan)
        return out
    if batchnorm:
        set_population_stats(model, data.x_train[: cfg["precise_bn_samples"]])
    out["train_acc"] = accuracy(model, data.x_train, data.y_train)
    out["test_acc"] = accuracy(model, data.x_test, data.y_test)
    return out


def _smooth(loss, window=50):
    """Running mean of the loss (for plots); NaN-free prefix only."""
    loss = np.asarray(loss, float)
    loss = loss[np.isfinite(loss)]
    if len(loss) < window:
        return loss.tolist()
    kernel = np.ones(window) / window
    return np.convolve(loss, kernel, mode="valid").tolist()


def run(cfg, progress=True):
    """The sweep over ``cfg["lrs"]``, plus the sigmoid pair if ``cfg["sigmoid"]``."""
    seed, lrs = cfg["seed"], cfg["lrs"]
    data = load_mnist(seed=seed, flatten=True)
    curves, summary = {}, {}
    runs = [(bn, lr, "relu") for lr in lrs for bn in (False, True)]
    runs += [(bn, cfg["sigmoid_lr"], "sigmoid") for bn in (False, True) if cfg["sigmoid"]]
    bar = progress_bar(len(runs), "learning-rate sweep", progress)
    for bn, lr, act in runs:
        label = f"{'bn' if bn else 'plain'}_{act}_lr{lr:g}"
        out = train_one(data, bn, lr, cfg, seed, act)
        smooth = _smooth(out["loss"])
        curves[f"loss_{label}"] = {"x": list(range(50, 50 + len(smooth))), "y": smooth}
        summary[f"train_acc_{label}"] = out["train_acc"]
        summary[f"test_acc_{label}"] = out["test_acc"]
        summary[f"diverged_at_{label}"] = out["diverged_at"]
        bar.update()
    bar.close()
    result = Result(NAME, cfg, curves, summary)
    result.claims = claims(result)
    return result


def usable(summary, net, lrs, threshold=0.9):
    """Learning rates at which ``net`` ("bn" or "plain") ReLU reached train accuracy >= threshold."""
    return usable_lrs(lambda lr: summary[f"train_acc_{net}_relu_lr{lr:g}"], lrs, threshold)


def claims(result):
    """B1-B3 (docs/reproductions.md) and the sigmoid pair (reported)."""
    s, cfg = result.summary, result.config
    asserted = unasserted_if_changed(cfg, config(cfg["fast"], cfg["seed"]), SCALE_KEYS)

    def acc(kind, net, lr):
        return s[f"{kind}_acc_{net}_relu_lr{lr:g}"]

    def trained(net, lr):  # a diverged run trained nothing: accuracy 0
        a = acc("train", net, lr)
        return 0.0 if math.isnan(a) else a

    def pct(v):
        return "diverged" if math.isnan(v) else f"{v:.3f}"

    lrs = cfg["lrs"]
    plain_big = {lr: s[f"diverged_at_plain_relu_lr{lr:g}"] for lr in (1.0, 3.0)}
    bn_big = [acc("train", "bn", lr) for lr in (1.0, 3.0)]
    bn_best_big = max((acc("test", "bn", lr) for lr in lrs
                       if lr >= 1.0 and not math.isnan(acc("test", "bn", lr))), default=0.0)
    bn_small, plain_small = acc("test", "bn", 0.01), acc("test", "plain", 0.01)
    plain_ok, bn_ok = usable(s, "plain", lrs), usable(s, "bn", lrs)
    found = [
        claim("B1", "Without BN large learning rates fail; with BN they train (usable LR >= 10x "
              "higher).", "Bjorck et al. 2018; Ioffe & Szegedy 2015 Sec. 4.2.2 (BN-x5, BN-x30)",
              "plain at lr 1 / 3: " + " / ".join(
                  "diverged" if plain_big[lr] is not None else f"train accuracy {trained('plain', lr):.3f}"
                  for lr in (1.0, 3.0))
              + f"; BN train accuracy at lr 1 / 3: {pct(bn_big[0])} / {pct(bn_big[1])}; LRs "
              f"reaching 90% train accuracy: plain {plain_ok}, BN {bn_ok}",
              "plain at lr 1 and 3 ends below 50% train accuracy (0 if it diverged); BN at 1 "
              "and 3 reaches >= 0.98",
              [Check("plain train accuracy at lr 1", trained("plain", 1.0), "<=", 0.5),
               Check("plain train accuracy at lr 3", trained("plain", 3.0), "<=", 0.5),
               Check("BN train accuracy at lr 1", bn_big[0], ">=", 0.98),
               Check("BN train accuracy at lr 3", bn_big[1], ">=", 0.98)], asserted),
        claim("B2", "BN's better generalization comes from the larger learning rate it allows.",
              "Bjorck et al. 2018",
              f"BN test accuracy: best at lr >= 1 {bn_best_big:.3f} vs {bn_small:.3f} at lr 0.01 "
              f"({100 * (bn_best_big - bn_small):+.1f} points)",
              "BN test accuracy at lr >= 1 >= its accuracy at lr 0.01 + 3 points",
              [Check("BN test accuracy, best lr >= 1 minus lr 0.01 (points)",
                     100 * (bn_best_big - bn_small), ">=", 3)], asserted),
        claim("B3", "At a matched (small) learning rate BN has no generalization advantage.",
              "Bjorck et al. 2018",
              f"test accuracy at lr 0.01: BN {bn_small:.3f}, plain {plain_small:.3f}",
              "at lr 0.01 BN test accuracy <= plain's",
              [Check("BN - plain test accuracy at lr 0.01 (points)",
                     100 * (bn_small - plain_small), "<=", 0)], asserted),
    ]
    if f"test_acc_bn_sigmoid_lr{cfg['sigmoid_lr']:g}" not in s:
        return found
    sig_plain, sig_bn = (s[f"test_acc_{n}_sigmoid_lr{cfg['sigmoid_lr']:g}"] for n in ("plain", "bn"))
    return found + [
        claim("B4", "With BN a deep sigmoid net trains (BN-x5-Sigmoid reached 69.8% where "
              "sigmoid Inception without BN never beat 1/1000).", "Ioffe & Szegedy 2015, Sec. 4.2.2",
              f"10-layer sigmoid MLP, lr {cfg['sigmoid_lr']:g}, test accuracy: BN {pct(sig_bn)}, "
              f"plain {pct(sig_plain)}", "BN sigmoid test accuracy >= 0.9",
              [Check("BN sigmoid test accuracy", sig_bn, ">=", 0.9)], "reported, not asserted"),
    ]


def plot(result):
    import matplotlib.pyplot as plt

    s = result.summary
    lrs = result.config["lrs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    for net, style in (("plain", "o--"), ("bn", "s-")):
        for kind, color in (("train", "C0"), ("test", "C1")):
            ys = [s[f"{kind}_acc_{net}_relu_lr{lr:g}"] for lr in lrs]
            ax.plot(lrs, [0.0 if math.isnan(y) else y for y in ys], style, color=color,
                    label=f"{'BN' if net == 'bn' else 'no BN'}, {kind}")
        for lr in lrs:
            if s[f"diverged_at_{net}_relu_lr{lr:g}"] is not None:
                ax.annotate("NaN", (lr, 0.02), ha="center", color="C3")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="accuracy (0 = diverged)", ylim=(0, 1.02),
           title=f"Deep ReLU MLP, {result.config['steps']} steps: accuracy vs learning rate")
    ax.legend(loc="center left")
    ax = axes[1]
    for lr, color in zip([lr for lr in (0.01, 0.1, 1.0, 3.0) if lr in lrs], ("C0", "C1", "C2", "C3")):
        for net, style in (("plain", "--"), ("bn", "-")):
            c = result.curves[f"loss_{net}_relu_lr{lr:g}"]
            ax.plot(c["x"], c["y"], style, color=color,
                    label=f"lr {lr:g}, {'BN' if net == 'bn' else 'no BN'}")
            diverged = result.summary[f"diverged_at_{net}_relu_lr{lr:g}"]
            if diverged is not None:
                ax.plot([diverged], [10], "x", color=color, ms=10)
    ax.set_yscale("log")
    ax.set_ylim(1e-3, 20)
    ax.set(xlabel="step", ylabel="training loss (50-step mean)",
           title="Training loss (dashed: no BN; x: diverged at that step)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return [fig]

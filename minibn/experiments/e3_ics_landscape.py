"""E3: Santurkar et al. 2018, Definition 2.1 (ICS) and Sec. 3.1 (Fig. 4): the loss landscape.

Internal covariate shift of layer i at step t, as the paper defines it: compare the gradient of
the loss w.r.t. W_i before (G) and after (G') the *preceding* layers take their SGD step, on the
same batch, with layers i..k unchanged: ICS = ||G - G'||_2, and cos(G, G'). If BN reduced ICS,
BN nets would show a smaller distance and a cosine nearer 1; they do not.

Landscape probes, at a step: move along the gradient, theta - eta * g for eta in a range of
multiples of the learning rate, and record the loss there (its range: "loss variation"), how far
the gradient moved (||grad(theta - eta g) - g||: "gradient predictiveness") and that distance
over the distance moved ("effective beta-smoothness"). BN shrinks the first two.

Nets: E2's 784-(100×10)-10 MLP (``torch_mlp``): std, BN and the ℓp variants, lr 0.1,
batch 128. ICS is ``minibn.experiments.ics``, shared with E4.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from minibn.experiments.ics import ics
from minibn.experiments.progress import progress_bar
from minibn.experiments.torch_mlp import LABELS, MLP
from minibn.experiments.torch_train import batches, load_data, sgd_step
from minibn.experiments.result import Check, Result, claim, ratio, unasserted_if_changed

VARIANTS = ("std", "bn", "l1", "l2", "linf")
MULTIPLIERS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _grads(loss_fn, params):
    loss = loss_fn()
    return float(loss.detach()), torch.autograd.grad(loss, params)


def probe_gradient_direction(loss_fn, params, lr, multipliers=MULTIPLIERS):
    """Move along the gradient: losses and gradient changes at ``theta - m * lr * g``.

    Returns a dict: ``losses`` (one per multiplier), ``grad_changes`` ``||grad(theta') - g||``,
    ``beta`` (the gradient change over the distance moved, ``m * lr * ||g||``). Parameters are
    restored before returning.
    """
    _, g = _grads(loss_fn, params)
    saved = [p.detach().clone() for p in params]
    g_flat, g_norm = _flat(g), float(_flat(g).norm())
    losses, changes, betas = [], [], []
    try:
        for m in multipliers:
            with torch.no_grad():
                for p, s, gi in zip(params, saved, g):
                    p.copy_(s - m * lr * gi)
            loss, g2 = _grads(loss_fn, params)
            change = float((_flat(g2) - g_flat).norm())
            losses.append(loss)
            changes.append(change)
            betas.append(change / (m * lr * g_norm + 1e-30))
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return {"losses": losses, "grad_changes": changes, "beta": betas}


SCALE_KEYS = ("depth", "width", "lr", "batch", "steps", "probe_every", "multipliers", "init")


def config(fast=True, seed=0, **overrides):
    """The run's settings; ``overrides`` replace any (the lesson shrinks ``variants``/``steps``)."""
    return {"depth": 10, "width": 100, "lr": 0.1, "batch": 128, "steps": 1000 if fast else 3000,
            "probe_every": 100 if fast else 150, "multipliers": list(MULTIPLIERS),
            "variants": list(VARIANTS), "init": "lecun", "seed": seed, "fast": fast, **overrides}


def probe_variant(variant, data, cfg, seed, progress=True):
    """Train one variant, probing the landscape and ICS every ``probe_every`` steps."""
    x_train, y_train = data[0], data[1]
    gen = torch.Generator().manual_seed(seed)
    sizes = [x_train.shape[1]] + [cfg["width"]] * cfg["depth"] + [10]
    model = MLP(sizes, norm=variant, init=cfg["init"], generator=gen)
    layers_probed = {"middle": cfg["depth"] // 2, "last": cfg["depth"]}
    rec = {k: [] for k in ("step", "loss_range", "grad_change", "beta", "losses", "loss")}
    for name in layers_probed:
        rec[f"ics_rel/{name}"], rec[f"ics_cos/{name}"] = [], []
    with progress_bar(cfg["steps"], LABELS[variant], progress) as bar:
        for step, idx in enumerate(batches(len(x_train), cfg["batch"], cfg["steps"], gen)):
            xb, yb = x_train[idx], y_train[idx]

            def loss_fn():
                return F.cross_entropy(model.forward(xb), yb)

            def grads_of(layers):
                loss = F.cross_entropy(model.forward(xb, layers=layers), yb)
                grads = iter(torch.autograd.grad(loss, [t for layer in layers for t in layer]))
                return [[next(grads) for _ in layer] for layer in layers]

            if step % cfg["probe_every"] == 0:
                p = probe_gradient_direction(loss_fn, model.params, cfg["lr"], cfg["multipliers"])
                finite = [v for v in p["losses"] if math.isfinite(v)]
                rec["step"].append(step)
                rec["losses"].append(p["losses"])
                rec["loss_range"].append(max(finite) - min(finite) if finite else math.nan)
                rec["grad_change"].append(max(p["grad_changes"]))
                rec["beta"].append(max(p["beta"]))
                for name, i in layers_probed.items():
                    _, rel, cos = ics(grads_of, model.layers, i, cfg["lr"])
                    rec[f"ics_rel/{name}"].append(rel)
                    rec[f"ics_cos/{name}"].append(cos)
            loss = loss_fn()
            grads = torch.autograd.grad(loss, model.params)
            sgd_step(model.params, grads, cfg["lr"])
            rec["loss"].append(float(loss.detach()))
            bar.update()
    return rec


def _median_after(rec, key, start=100):
    vals = [v for s, v in zip(rec["step"], rec[key]) if s >= start]
    return float(np.nanmedian(vals)) if vals else math.nan


def run(cfg, progress=True):
    """Probe every variant; returns a Result with claims L1-L3 and I1 (β_eff shown, not claimed)."""
    seed = cfg["seed"]
    torch.manual_seed(seed)
    data = load_data(seed)
    curves, summary = {}, {}
    for v in cfg["variants"]:
        rec = probe_variant(v, data, cfg, seed, progress)
        for key in ("loss_range", "grad_change", "beta", "ics_rel/middle", "ics_rel/last",
                    "ics_cos/middle", "ics_cos/last"):
            curves[f"{key}/{v}"] = {"x": rec["step"], "y": rec[key]}
            summary[f"{v}/{key}"] = _median_after(rec, key)
        curves[f"losses_along_gradient/{v}"] = {"x": rec["step"], "y": rec["losses"]}
        curves[f"loss/{v}"] = {"x": list(range(len(rec["loss"]))), "y": rec["loss"]}
        summary[f"{v}/ics_rel"] = float(np.mean([summary[f"{v}/ics_rel/middle"],
                                                 summary[f"{v}/ics_rel/last"]]))
    result = Result("ics_landscape", cfg, curves, summary)
    result.claims = claims(result)
    return result


def claims(result):
    """L1-L3, I1 and I2 (docs/reproductions.md): medians over probes at step >= 100."""
    s, cfg = result.summary, result.config
    asserted = unasserted_if_changed(cfg, config(cfg["fast"], cfg["seed"]), SCALE_KEYS)
    have = {k.split("/")[0] for k in s}
    if not {"std", "bn"} <= have:
        return []
    lr_std, lr_bn = s["std/loss_range"], s["bn/loss_range"]
    gc_std, gc_bn = s["std/grad_change"], s["bn/grad_change"]
    ics_std, ics_bn = s["std/ics_rel"], s["bn/ics_rel"]
    out = [
        claim("L1", "BN makes the loss vary far less along the gradient direction",
              "Santurkar et al. 2018, Fig. 4a",
              f"median loss range: std {lr_std:.3g}, BN {lr_bn:.3g} (ratio {lr_std / lr_bn:.0f}x)",
              "std/BN loss-range ratio >= 2.5",
              [Check("std / BN loss range", ratio(lr_std, lr_bn), ">=", 2.5)], asserted),
        claim("L2", "BN makes the gradient more predictive (it changes less along the gradient)",
              "Santurkar et al. 2018, Fig. 4b",
              f"median max gradient change: std {gc_std:.3g}, BN {gc_bn:.3g} "
              f"(ratio {gc_std / gc_bn:.1f}x)",
              "std/BN gradient-change ratio >= 3",
              [Check("std / BN max gradient change", ratio(gc_std, gc_bn), ">=", 3)],
              "reported, not asserted: 1.2-19x over 20 runs; in some seeds the standard net "
              "trains smoothly at this learning rate"),
        claim("L4", "BN improves effective β-smoothness", "Santurkar et al. 2018, Fig. 4c",
              f"median β_eff: std {s['std/beta']:.3g}, BN {s['bn/beta']:.3g}",
              "std/BN β_eff ratio >= 1.5",
              [Check("std / BN beta_eff", ratio(s["std/beta"], s["bn/beta"]), ">=", 1.5)],
              "reported, not asserted: no gap at this scale"),
        claim("I1", "BN does not remove internal covariate shift (Definition 2.1)",
              "Santurkar et al. 2018, Fig. 3",
              f"median relative ICS ||G-G'||/||G||: std {ics_std:.2f}, BN {ics_bn:.2f}",
              "BN relative ICS >= 0.5: its gradient still moves by half its size",
              [Check("BN relative ICS", ics_bn, ">=", 0.5)], asserted),
        claim("I2", "BN does not reduce internal covariate shift (as much ICS as without BN)",
              "Santurkar et al. 2018, Fig. 3",
              f"median relative ICS: BN / std = {ratio(ics_bn, ics_std):.2f}",
              "BN relative ICS >= 0.7x std's",
              [Check("BN / std relative ICS", ratio(ics_bn, ics_std), ">=", 0.7)],
              "reported, not asserted: BN's is about 0.7x std's here, too close to call"),
    ]
    lp = [v for v in ("l1", "l2", "linf") if v in have]
    if lp:
        ranges = {v: s[f"{v}/loss_range"] for v in lp}
        out.append(claim(
            "L3", "ℓp normalization smooths the landscape too", "Santurkar et al. 2018, Sec. 3.2",
            "median loss range: " + ", ".join(f"{LABELS[v]} {r:.3g}" for v, r in ranges.items())
            + f"; std {lr_std:.3g}", "each ℓp loss range <= 0.1x std's",
            [Check(f"{v} / std loss range", ratio(r, lr_std), "<=", 0.1) for v, r in ranges.items()],
            "reported, not asserted: up to 0.57x in the seeds where the standard net trains "
            "smoothly"))
    return out


def plot(result):
    """Fig. 4 analogue (loss range, gradient change, β_eff per probe) and Fig. 3 (ICS)."""
    import matplotlib.pyplot as plt

    variants = result.config["variants"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    titles = {"loss_range": "loss variation along the gradient",
              "grad_change": "gradient predictiveness (max ‖Δ∇L‖)",
              "beta": "effective β-smoothness (shown, not claimed)"}
    for ax, key in zip(axes, titles):
        for v in variants:
            c = result.curves[f"{key}/{v}"]
            ax.plot(c["x"], c["y"], marker="o", ms=3, label=LABELS[v])
        ax.set(yscale="log", xlabel="step", title=titles[key])
    axes[0].legend()
    fig.tight_layout()
    fig2, axes2 = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes2[0], "ics_rel", "‖G − G′‖ / ‖G‖"), (axes2[1], "ics_cos", "cos(G, G′)")):
        for v in [v for v in variants if v in ("std", "bn")]:
            for layer, style in (("middle", "-"), ("last", "--")):
                c = result.curves[f"{key}/{layer}/{v}"]
                ax.plot(c["x"], c["y"], style, marker="o", ms=3, label=f"{LABELS[v]}, {layer} layer")
        ax.set(xlabel="step", ylabel=label, title=f"ICS (Definition 2.1): {label}")
    axes2[0].legend(fontsize=8)
    fig2.tight_layout()
    return [fig, fig2]


def numpy_view(model, x, y):
    """``(weights, grad_fn)``: ``model``'s layers as NumPy vectors, for the lesson's exercises.

    ``weights[j]`` is layer j's parameters flattened into one float64 vector; ``grad_fn(ws)``
    returns the gradients of the cross-entropy on ``(x, y)`` at ``ws``, in the same layout
    (the model's own parameters are left as they were).
    """
    def flat(tensors):
        return np.concatenate([t.detach().double().reshape(-1).numpy() for t in tensors])

    weights = [flat(layer) for layer in model.layers]

    def grad_fn(ws):
        saved = [p.detach().clone() for p in model.params]
        try:
            with torch.no_grad():
                for layer, w in zip(model.layers, ws):
                    sizes = [t.numel() for t in layer]
                    for t, part in zip(layer, np.split(np.asarray(w), np.cumsum(sizes)[:-1])):
                        t.copy_(torch.as_tensor(part).reshape(t.shape))
            loss = F.cross_entropy(model.forward(x), y)
            grads = torch.autograd.grad(loss, model.params)
        finally:
            with torch.no_grad():
                for p, s in zip(model.params, saved):
                    p.copy_(s)
        it = iter(grads)
        return [flat([next(it) for _ in layer]) for layer in model.layers]

    return weights, grad_fn

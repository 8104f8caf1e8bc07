"""Checks for lesson 05-figure1: tracking a sigmoid's input distribution, and one SGD step with BN.

Learner functions checked here:
- ``percentile_band(h, q=(15, 50, 85)) -> (len(q), units)``: for activations ``h`` of shape
  ``(N, units)``, each unit's percentiles over the N examples (linear interpolation, as
  ``np.percentile``).
- ``train_step(model, x, y, lr) -> float``: one step of plain SGD on a
  ``minibn.experiments.numpy_mlp.MLP`` (training-mode forward, softmax cross-entropy, backward,
  ``p -= lr * grad`` for every parameter); returns the loss before the update.
"""
from __future__ import annotations

import copy

import numpy as np

from minibn.checks._core import Case, Exercise, Hint, assert_close, assert_unchanged
from minibn.experiments.numpy_mlp import MLP, softmax_cross_entropy

__all__ = [
    "check_percentile_band",
    "check_percentile_band_randomized",
    "check_train_step",
    "check_train_step_randomized",
]

Q = (15, 50, 85)


def _band_case(description, h, q=Q):
    return Case(description, {"h": h}, {"q": tuple(q)})


def _band_public_cases():
    rng = np.random.default_rng(1502)
    return [
        _band_case("h of shape (7, 4), float64", rng.normal(0, 2, (7, 4))),
        _band_case("h of shape (100, 5), float32 (sigmoid inputs of 100 test images)",
                   rng.normal(-1, 3, (100, 5)).astype(np.float32)),
        _band_case("h of shape (10, 4), q=(10, 90)", rng.normal(2, 1, (10, 4)), q=(10, 90)),
        _band_case("h of shape (2, 6): two examples", rng.normal(0, 1, (2, 6))),
    ]


def _band_hints(h, q):
    h = np.asarray(h, np.float64)
    hints = [Hint(np.percentile(h, np.asarray(q) / 100.0, axis=0),
                  "q is in percent (15 means the 15th percentile), not a fraction: "
                  "np.percentile takes 0-100, np.quantile 0-1.")]
    want = np.percentile(h, q, axis=0)
    if want.shape[0] == want.shape[1]:
        hints.append(Hint(want.T, "the result is transposed: one row per percentile, one column "
                          "per unit, i.e. (len(q), units); stack the percentiles as rows."))
    for method in ("lower", "higher", "nearest", "midpoint"):
        hints.append(Hint(np.percentile(h, q, axis=0, method=method),
                          f"this is the '{method}' percentile; interpolate linearly between the "
                          "two nearest ranks (np.percentile's default method)."))
    return hints


def _check_band_case(fn, case):
    h, q = case["h"], case["q"]
    copy_h = np.array(h, copy=True)
    got = fn(h, q)
    assert_unchanged("h", h, copy_h, case, "percentile_band")
    want = np.percentile(np.asarray(h, np.float64), q, axis=0)
    got_arr = np.asarray(got) if isinstance(got, (list, tuple)) else got
    if isinstance(got_arr, np.ndarray) and got_arr.shape == (len(q), h.shape[0]) != want.shape:
        raise AssertionError(
            f"percentile_band returned shape {got_arr.shape}, expected {want.shape} "
            f"({case.description}).\nHint: you took percentiles across units, one per example "
            "(axis=1); take them over the examples, one per unit (axis=0).")
    if isinstance(got_arr, np.ndarray) and got_arr.shape == want.T.shape != want.shape:
        raise AssertionError(
            f"percentile_band returned shape {got_arr.shape}, expected {want.shape} = "
            f"(len(q), units) ({case.description}).\nHint: stack the percentiles as rows.")
    assert_close("percentile band", got_arr, want, case, atol=1e-6, rtol=1e-5,
                 hints=_band_hints(h, q))


def _band_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(5):
        n, units = int(rng.integers(3, 60)), int(rng.integers(1, 9))
        if n == units:
            n += 1
        q = tuple(sorted(int(v) for v in rng.choice(np.arange(1, 100), int(rng.integers(1, 4)),
                                                     replace=False)))
        h = rng.normal(rng.normal(0, 3), 10 ** rng.uniform(-1, 1), (n, units))
        cases.append(_band_case(f"h of shape {h.shape}, float64, q={q}", h, q))
    return cases


BAND = Exercise("percentile_band", _band_public_cases, _band_randomized, _check_band_case,
                summary="each unit's percentiles over the examples, as np.percentile(h, q, axis=0)")
check_percentile_band, check_percentile_band_randomized = BAND.checks(module=__name__)


# ---- one SGD step with BN -------------------------------------------------------------------

def _reference_step(model, x, y, lr, sign=-1.0):
    loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        p += sign * lr * g
    return loss


def _step_case(description, sizes, activation, batchnorm, n, lr, seed):
    rng = np.random.default_rng(seed)
    model = MLP(sizes, activation, batchnorm=batchnorm, init="lecun", rng=rng)
    if batchnorm:
        # gamma and beta away from 1 and 0, so swapped or missing updates show
        for bn in model.batchnorms():
            bn.gamma[...] = rng.uniform(0.5, 1.5, bn.gamma.shape)
            bn.beta[...] = rng.normal(0, 0.5, bn.beta.shape)
            bn.running_mean[...] = rng.normal(0, 1, bn.running_mean.shape)
            bn.running_var[...] = rng.uniform(0.5, 2, bn.running_var.shape)
    x = rng.normal(0, 1, (n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    return Case(description, {"x": x, "y": y}, {"model": model, "lr": lr})


def _step_public_cases():
    return [
        _step_case("MLP [6, 5, 5, 3], sigmoid, with BN, batch 8, lr 0.5",
                   [6, 5, 5, 3], "sigmoid", True, 8, 0.5, 1),
        _step_case("MLP [4, 6, 3], relu, no BN, batch 5, lr 0.1", [4, 6, 3], "relu", False, 5, 0.1, 2),
        _step_case("MLP [8, 7, 7, 7, 4], relu, with BN, batch 16, lr 1.0",
                   [8, 7, 7, 7, 4], "relu", True, 16, 1.0, 3),
    ]


def _check_step_case(fn, case):
    model, lr, x, y = case["model"], case["lr"], case["x"], case["y"]
    theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
    before = [p.copy() for p in model.params()]
    x_copy = x.copy()
    try:
        loss = fn(theirs, x, y, lr)
    except RuntimeError as err:
        if "training-mode forward" not in str(err):
            raise
        raise AssertionError(
            f"train_step failed ({case.description}): {err}.\nHint: the forward pass ran in "
            "eval mode (train=False). Training must normalize with the batch statistics: "
            "model.forward(x, train=True).") from None
    assert_unchanged("x", x, x_copy, case, "train_step")
    want_loss = _reference_step(ours, x, y, lr)
    if isinstance(loss, np.ndarray) and loss.size == 1:
        loss = loss.item()
    if not isinstance(loss, (float, np.floating)):
        raise AssertionError(f"train_step must return the loss as a float, got "
                             f"{type(loss).__name__} ({case.description})")
    got_params = theirs.params()
    for i, (got, want, old) in enumerate(zip(got_params, ours.params(), before)):
        # A parameter whose every gradient is zero (a layer of dead ReLUs) stays put in the
        # reference step too: only a parameter the reference moved must move.
        if np.array_equal(got, old) and not np.array_equal(want, old):
            raise AssertionError(
                f"parameter {i} (shape {old.shape}) did not change ({case.description}).\nHint: "
                "call model.backward(dlogits), then update every parameter IN PLACE with "
                "p -= lr * g (p = p - lr * g only rebinds the loop variable).")
        uphill = copy.deepcopy(model)
        _reference_step(uphill, x, y, lr, sign=+1.0)
        hints = [Hint(uphill.params()[i], "the parameters moved up the gradient: SGD subtracts, "
                      "p -= lr * g.")]
        assert_close(f"parameter {i} after the step", got, want, case, atol=1e-5, rtol=1e-4,
                     hints=hints)
    after = softmax_cross_entropy(copy.deepcopy(ours).forward(x, train=True), y)[0]
    assert_close("returned loss", np.array([loss], np.float64), np.array([want_loss]), case,
                 atol=1e-5, rtol=1e-5, hints=[Hint(np.array([after]), "return the loss computed "
                                                   "before the update, not after it.")])


def _step_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(3):
        depth = int(rng.integers(1, 4))
        sizes = [int(rng.integers(2, 9)) for _ in range(depth + 1)] + [int(rng.integers(2, 5))]
        act = str(rng.choice(["sigmoid", "relu"]))
        bn = bool(rng.integers(0, 2)) or i == 0
        n, lr = int(rng.integers(4, 20)), float(10 ** rng.uniform(-2, 0.3))
        cases.append(_step_case(f"MLP {sizes}, {act}, {'with' if bn else 'no'} BN, batch {n}, "
                                f"lr {lr:.3g}", sizes, act, bn, n, lr, int(rng.integers(0, 2**31))))
    return cases


STEP = Exercise("train_step", _step_public_cases, _step_randomized, _check_step_case,
                summary="one plain SGD step on a minibn MLP, every parameter and the returned "
                "loss against a reference step on a copy")
check_train_step, check_train_step_randomized = STEP.checks(module=__name__)

EXERCISES = (BAND, STEP)

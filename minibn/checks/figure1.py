"""Checks for lesson 05-figure1: one SGD step with BN, and Figure 1's measurement at a checkpoint.

Learner functions checked here, both functions of a ``minibn.experiments.numpy_mlp.MLP`` (so each
exercise has a ``compute`` half, run next to the learner's code, and a ``judge`` half):
- ``train_step(model, x, y, lr) -> float``: one step of plain SGD (training-mode forward,
  softmax cross-entropy, backward, ``p -= lr * grad`` for every parameter); returns the loss
  before the update.
- ``evaluate(model, calib, x, y, q=(15, 50, 85)) -> (accuracy, band)``: every BN layer's running
  statistics set to the population statistics of ``calib`` (Algorithm 2 with one batch, layer by
  layer: the mean and unbiased variance of that layer's input when ``calib`` goes through the
  net in eval mode), then the eval-mode accuracy on ``(x, y)`` and, for each unit of the last
  hidden layer, the ``q``-th percentiles of its sigmoid input over ``x`` (``(len(q), units)``).
"""
from __future__ import annotations

import copy

import numpy as np

from minibn.checks._core import Case, Exercise, Hint, answer, assert_close, assert_unchanged
from minibn.experiments.numpy_mlp import MLP, BatchNorm, softmax_cross_entropy
from minibn.experiments.numpy_train import set_population_stats

__all__ = [
    "check_evaluate",
    "check_evaluate_randomized",
    "check_train_step",
    "check_train_step_randomized",
]

Q = (15, 50, 85)


def _model(sizes, activation, batchnorm, rng):
    model = MLP(sizes, activation, batchnorm=batchnorm, init="lecun", rng=rng)
    if batchnorm:
        # gamma, beta and the running statistics away from 1 and 0, so swapped or missing
        # updates, and running statistics left as they were, show
        for bn in model.batchnorms():
            bn.gamma[...] = rng.uniform(0.5, 1.5, bn.gamma.shape)
            bn.beta[...] = rng.normal(0, 0.5, bn.beta.shape)
            bn.running_mean[...] = rng.normal(0, 1, bn.running_mean.shape)
            bn.running_var[...] = rng.uniform(0.5, 2, bn.running_var.shape)
    return model


def _number_or_type(value):
    """A returned scalar as a float, or its type's name: the judge says what was wrong."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (float, np.floating)) or (isinstance(value, (int, np.integer))
                                                   and not isinstance(value, bool)):
        return float(value)
    return type(value).__name__


# ---- one SGD step with BN -------------------------------------------------------------------

def _reference_step(model, x, y, lr, sign=-1.0):
    loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        p += sign * lr * g
    return loss


def _step_case(description, sizes, activation, batchnorm, n, lr, seed):
    rng = np.random.default_rng(seed)
    model = _model(sizes, activation, batchnorm, rng)
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


def _step_compute(fn, case):
    model, lr, x, y = copy.deepcopy(case["model"]), case["lr"], case["x"], case["y"]
    x_copy = x.copy()
    try:
        loss = fn(model, x, y, lr)
    except RuntimeError as err:
        if "training-mode forward" not in str(err):
            raise
        raise AssertionError(
            f"train_step failed ({case.description}): {err}.\nHint: the forward pass ran in "
            "eval mode (train=False). Training must normalize with the batch statistics: "
            "model.forward(x, train=True).") from None
    assert_unchanged("x", x, x_copy, case, "train_step")
    return {"loss": _number_or_type(loss), "params": [np.array(p, copy=True) for p in model.params()]}


def _step_judge(answers, case):
    model, lr, x, y = case["model"], case["lr"], case["x"], case["y"]
    ours = copy.deepcopy(model)
    want_loss = _reference_step(ours, x, y, lr)
    loss = answer(answers, "loss")
    if isinstance(loss, str):
        raise AssertionError(f"train_step must return the loss as a float, got {loss} ({case.description})")
    got_params, before = answers["params"], model.params()
    if len(got_params) != len(before):
        raise AssertionError(f"the model has {len(got_params)} parameters after train_step, "
                             f"expected {len(before)} ({case.description})")
    uphill = copy.deepcopy(model)
    _reference_step(uphill, x, y, lr, sign=+1.0)
    for i, (got, want, old) in enumerate(zip(got_params, ours.params(), before)):
        # A parameter whose every gradient is zero (a layer of dead ReLUs) stays put in the
        # reference step too: only a parameter the reference moved must move.
        if np.array_equal(got, old) and not np.array_equal(want, old):
            raise AssertionError(
                f"parameter {i} (shape {old.shape}) did not change ({case.description}).\nHint: "
                "call model.backward(dlogits), then update every parameter IN PLACE with "
                "p -= lr * g (p = p - lr * g only rebinds the loop variable).")
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


STEP = Exercise("train_step", _step_public_cases, _step_randomized, None,
                summary="one plain SGD step on a minibn MLP, every parameter and the returned "
                "loss against a reference step on a copy", compute=_step_compute, judge=_step_judge)
check_train_step, check_train_step_randomized = STEP.checks(module=__name__)


# ---- Figure 1's measurement: population statistics, eval mode, the percentile band ----------

def _eval_case(description, sizes, activation, batchnorm, m, n, seed, q=Q):
    rng = np.random.default_rng(seed)
    model = _model(sizes, activation, batchnorm, rng)
    # offset inputs: the population statistics are far from the running ones the case starts with
    calib = rng.normal(rng.normal(0, 2), rng.uniform(0.5, 3), (m, sizes[0])).astype(np.float32)
    x = rng.normal(rng.normal(0, 2), rng.uniform(0.5, 3), (n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    return Case(description, {"calib": calib, "x": x, "y": y}, {"model": model, "q": tuple(q)})


def _eval_public_cases():
    return [
        _eval_case("MLP [6, 5, 5, 4], sigmoid, with BN, calib 8, test 12", [6, 5, 5, 4], "sigmoid",
                   True, 8, 12, 51),
        _eval_case("MLP [5, 7, 3], sigmoid, no BN, calib 6, test 9", [5, 7, 3], "sigmoid",
                   False, 6, 9, 52),
        _eval_case("MLP [4, 6, 6, 6, 3], relu, with BN, calib 5, test 20, q=(10, 90)",
                   [4, 6, 6, 6, 3], "relu", True, 5, 20, 53, q=(10, 90)),
    ]


def _eval_compute(fn, case):
    model = copy.deepcopy(case["model"])
    inputs = {k: case[k] for k in ("calib", "x", "y")}
    copies = {k: v.copy() for k, v in inputs.items()}
    out = fn(model, inputs["calib"], inputs["x"], inputs["y"], case["q"])
    for k, v in inputs.items():
        assert_unchanged(k, v, copies[k], case, "evaluate")
    if not (isinstance(out, tuple) and len(out) == 2):
        length = f" of length {len(out)}" if isinstance(out, (list, tuple)) else ""
        return {"returned": type(out).__name__ + length}
    acc, band = out
    band = np.asarray(band) if isinstance(band, (list, tuple)) else band
    return {"accuracy": _number_or_type(acc),
            "band": band if isinstance(band, np.ndarray) else type(band).__name__,
            "running": [[bn.running_mean.copy(), bn.running_var.copy()] for bn in model.batchnorms()]}


def _pre_activation(model, x, train=False):
    model.forward(x, train=train)
    return model.pre_activations[-1]


def _stats_hints(model, calib, x, layer):
    """What the running statistics of BN layer ``layer`` are after each known mistake."""
    m = len(calib)
    momentum = copy.deepcopy(model)
    momentum.forward(calib, train=True)  # one training pass: a momentum step, not a replacement
    chained = copy.deepcopy(model)  # each BN layer's input taken from a training-mode pass
    h = np.asarray(calib, np.float32)
    for step in chained.layers:
        stats = (h.mean(axis=0), h.var(axis=0) * m / (m - 1)) if isinstance(step, BatchNorm) else None
        h = step.forward(h, train=True)
        if stats is not None:
            step.running_mean[...], step.running_var[...] = stats
    biased = set_population_stats(copy.deepcopy(model), calib)
    for bn in biased.batchnorms():
        bn.running_var[...] *= (m - 1) / m
    test_in_train = set_population_stats(copy.deepcopy(model), calib)
    test_in_train.forward(x, train=True)
    mean = lambda mdl: mdl.batchnorms()[layer].running_mean  # noqa: E731
    var = lambda mdl: mdl.batchnorms()[layer].running_var  # noqa: E731
    moved = ("the statistics were set, then moved: a training-mode pass over x took a momentum step "
             "towards the test batch's statistics. Evaluate with model.forward(x, train=False).")
    return {
        "mean": [Hint(mean(momentum), "the running mean took one momentum step towards the batch "
                      "mean (a training-mode forward pass); set it to the population mean instead."),
                 Hint(mean(chained), "the inputs of the later BN layers came from a training-mode "
                      "pass (earlier layers normalized with calib's own statistics): go layer by layer, "
                      "setting each BN layer's statistics and then passing calib through it in eval mode."),
                 Hint(mean(test_in_train), moved)],
        "var": [Hint(var(momentum), "the running variance took one momentum step (a training-mode "
                     "forward pass); set it to the population variance instead."),
                Hint(var(biased), "this is the biased variance: Algorithm 2 uses the unbiased one, "
                     "m/(m-1) times the batch variance."),
                Hint(var(chained), "the inputs of the later BN layers came from a training-mode pass: go "
                     "layer by layer, setting each BN layer's statistics and then passing calib "
                     "through it in eval mode."),
                Hint(var(test_in_train), moved)],
    }


def _band_hints(h, q, train_band, first_band):
    h = np.asarray(h, np.float64)
    want = np.percentile(h, q, axis=0)
    hints = [Hint(train_band, "the band comes from a training-mode pass over x (BN normalized with the "
                  "test batch's own statistics); evaluate with model.forward(x, train=False)."),
             Hint(first_band, "this is the first hidden layer's band: Figure 1 tracks the last hidden "
                  "layer, model.pre_activations[-1]."),
             Hint(np.percentile(h, np.asarray(q) / 100.0, axis=0),
                  "q is in percent (15 means the 15th percentile), not a fraction: "
                  "np.percentile takes 0-100, np.quantile 0-1.")]
    if want.shape[0] == want.shape[1]:
        hints.append(Hint(want.T, "the band is transposed: one row per percentile, one column "
                          "per unit, i.e. (len(q), units)."))
    for method in ("lower", "higher", "nearest", "midpoint"):
        hints.append(Hint(np.percentile(h, q, axis=0, method=method),
                          f"this is the '{method}' percentile; interpolate linearly between the "
                          "two nearest ranks (np.percentile's default method)."))
    return hints


def _eval_judge(answers, case):
    model, calib, x, y, q = case["model"], case["calib"], case["x"], case["y"], case["q"]
    if "returned" in answers:
        raise AssertionError(f"evaluate must return a tuple (accuracy, band), got {answers['returned']} "
                             f"({case.description})")
    ours = set_population_stats(copy.deepcopy(model), calib)
    for i, (bn, (mean, var)) in enumerate(zip(ours.batchnorms(), answers["running"])):
        def hints(kind, i=i):  # built only on a failure
            return _stats_hints(model, calib, x, i)[kind]
        if np.array_equal(mean, model.batchnorms()[i].running_mean):
            raise AssertionError(
                f"the running mean of BN layer {i} is unchanged ({case.description}).\nHint: before "
                "evaluating, set every BN layer's running_mean and running_var (in place, [...] = ) to "
                "the population statistics of calib.")
        assert_close(f"running_mean of BN layer {i}", mean, bn.running_mean, case, atol=1e-4, rtol=1e-4,
                     hints=lambda: hints("mean"))
        assert_close(f"running_var of BN layer {i}", var, bn.running_var, case, atol=1e-4, rtol=1e-3,
                     hints=lambda: hints("var"))
    h = _pre_activation(ours, x)
    want_band = np.percentile(np.asarray(h, np.float64), q, axis=0)
    band = answers["band"]
    if isinstance(band, str):
        raise AssertionError(f"the band must be a NumPy array, got {band} ({case.description})")
    if band.shape == (len(q), len(x)) != want_band.shape:
        raise AssertionError(
            f"the band has shape {band.shape}, expected {want_band.shape} ({case.description}).\n"
            "Hint: you took percentiles across units, one per example (axis=1); take them over the "
            "examples, one per unit (axis=0).")
    train_band = np.percentile(_pre_activation(copy.deepcopy(ours), x, train=True), q, axis=0)
    ours.forward(x, train=False)
    first_band = np.percentile(ours.pre_activations[0], q, axis=0)
    assert_close("percentile band", band, want_band, case, atol=1e-4, rtol=1e-4,
                 hints=lambda: _band_hints(h, q, train_band, first_band))
    acc = answer(answers, "accuracy")
    if isinstance(acc, str):
        raise AssertionError(f"the accuracy must be a float, got {acc} ({case.description})")
    want_acc = float((ours.forward(x, train=False).argmax(axis=1) == y).mean())
    # one example's worth: a tie between two logits may break either way in float32
    assert_close("accuracy", np.array([acc]), np.array([want_acc]), case, atol=1.0 / len(y) + 1e-9,
                 rtol=0, hints=[Hint(np.array([want_acc * 100]), "the accuracy is a fraction in [0, 1], "
                                     "not a percentage.")])


def _eval_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(3):
        depth = int(rng.integers(1, 4))
        sizes = [int(rng.integers(2, 9)) for _ in range(depth + 1)] + [int(rng.integers(2, 5))]
        act = "sigmoid" if i == 0 else str(rng.choice(["sigmoid", "relu"]))
        bn = i == 0 or bool(rng.integers(0, 2))
        m, n = int(rng.integers(4, 30)), int(rng.integers(5, 40))
        drawn = rng.choice(np.arange(1, 100), int(rng.integers(1, 4)), replace=False)
        q = Q if i == 0 else tuple(sorted(int(v) for v in drawn))
        cases.append(_eval_case(f"MLP {sizes}, {act}, {'with' if bn else 'no'} BN, calib {m}, "
                                f"test {n}, q={q}", sizes, act, bn, m, n, int(rng.integers(0, 2**31)), q))
    return cases


EVALUATE = Exercise("evaluate", _eval_public_cases, _eval_randomized, None,
                    summary="population statistics of calib layer by layer, then the eval-mode accuracy "
                    "and the last hidden layer's percentile band", compute=_eval_compute, judge=_eval_judge)
check_evaluate, check_evaluate_randomized = EVALUATE.checks(module=__name__)

EXERCISES = (STEP, EVALUATE)

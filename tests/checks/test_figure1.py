"""The lesson 05 checks accept correct code and reject each known bug with its hint."""
import numpy as np
import pytest

from minibn.checks import figure1 as checks
from minibn.experiments.numpy_mlp import BatchNorm, softmax_cross_entropy


Q = (15, 50, 85)


def _population_stats(model, calib, *, ddof=1, train=False):
    """Each BN layer's statistics from its input, layer by layer; ``train``: inputs from a
    training-mode pass (a bug under test), which also moves them by a momentum step."""
    h = np.asarray(calib, np.float32)
    for layer in model.layers:
        stats = (h.mean(axis=0), h.var(axis=0, ddof=ddof)) if isinstance(layer, BatchNorm) else None
        if stats is not None:
            layer.running_mean[...], layer.running_var[...] = stats
        h = layer.forward(h, train=train)
        if stats is not None and train:
            layer.running_mean[...], layer.running_var[...] = stats


def _np_band(h, q):
    return np.percentile(h, q, axis=0)


def _evaluate(model, calib, x, y, q, *, stats="layer by layer", ddof=1, train=False, layer=-1,
              band=_np_band, percent=False):
    """``evaluate``, and the known bugs by keyword."""
    if stats == "layer by layer":
        _population_stats(model, calib, ddof=ddof)
    elif stats == "training pass":
        _population_stats(model, calib, train=True)
    elif stats == "momentum step":
        model.forward(calib, train=True)
    logits = model.forward(x, train=train)
    accuracy = float((logits.argmax(axis=1) == y).mean())
    return (100 * accuracy if percent else accuracy), band(model.pre_activations[layer], q)


def evaluate(model, calib, x, y, q=Q):
    return _evaluate(model, calib, x, y, q)


def evaluate_by_hand(model, calib, x, y, q=Q):
    # a learner-style version: Algorithm 2 written out, percentiles by sorting and interpolating
    h = np.asarray(calib, np.float64)
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            mu = h.mean(axis=0)
            layer.running_mean[...] = mu
            layer.running_var[...] = ((h - mu) ** 2).sum(axis=0) / (len(h) - 1)
        h = layer.forward(h, train=False)

    def band(h, q):
        s = np.sort(np.asarray(h, np.float64), axis=0)
        pos = np.asarray(q) / 100 * (len(s) - 1)
        lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
        w = (pos - lo)[:, None]
        return s[lo] * (1 - w) + s[hi] * w
    return _evaluate(model, calib, x, y, q, stats=None, band=band)


def _bug(**how):
    return lambda model, calib, x, y, q=Q: _evaluate(model, calib, x, y, q, **how)


def _sorts_x(model, calib, x, y, q=Q):
    x.sort(axis=0)
    return evaluate(model, calib, x, y, q)


EVALUATE_BUGS = {
    "running stats untouched": (_bug(stats=None), "set every BN layer"),
    "one momentum step": (_bug(stats="momentum step"), "momentum step"),
    "biased variance": (_bug(ddof=0), "unbiased"),
    "stats from a training-mode pass": (_bug(stats="training pass"), "layer by layer"),
    "test set in training mode": (_bug(train=True), "train=False"),
    "first hidden layer": (_bug(layer=0), "pre_activations[-1]"),
    "band over axis 1": (_bug(band=lambda h, q: np.percentile(h, q, axis=1)), "axis=0"),
    "q as fractions": (_bug(band=lambda h, q: np.percentile(h, np.asarray(q) / 100, axis=0)), "in percent"),
    "nearest rank": (_bug(band=lambda h, q: np.percentile(h, q, axis=0, method="nearest")),
                     "interpolate linearly"),
    "accuracy in percent": (_bug(percent=True), "not a percentage"),
    "returns the band only": (lambda *args: evaluate(*args)[1], "a tuple (accuracy, band)"),
    "sorts x in place": (_sorts_x, "input mutated"),
}


@pytest.mark.parametrize("fn", [evaluate, evaluate_by_hand])
def test_correct_evaluate_passes(fn):
    checks.check_evaluate(fn)
    for seed in (0, 1, 2):
        checks.check_evaluate_randomized(fn, seed=seed)


@pytest.mark.parametrize("name", sorted(EVALUATE_BUGS))
def test_evaluate_bug_is_rejected_with_its_hint(name):
    fn, hint = EVALUATE_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_evaluate(fn)
    assert hint in str(err.value)
    with pytest.raises(AssertionError, match="randomized case"):
        checks.check_evaluate_randomized(fn, seed=4)


def step(model, x, y, lr):
    loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        p -= lr * g
    return loss


def step_eval_mode(model, x, y, lr):
    loss, dlogits = softmax_cross_entropy(model.forward(x, train=False), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        p -= lr * g
    return loss


def step_rebinds(model, x, y, lr):
    loss, dlogits = softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        p = p - lr * g  # noqa: F841 (the bug: a new array, the model keeps the old one)
    return loss


def step_uphill(model, x, y, lr):
    loss, dlogits = softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        p += lr * g
    return loss


def step_loss_after(model, x, y, lr):
    step(model, x, y, lr)
    return softmax_cross_entropy(model.forward(x), y)[0]


def step_no_backward(model, x, y, lr):
    loss, _ = softmax_cross_entropy(model.forward(x), y)
    for p, g in zip(model.params(), model.grads()):
        p -= lr * g  # stale (zero) gradients
    return loss


STEP_BUGS = {
    "eval mode": (step_eval_mode, "train=True"),
    "p = p - lr * g": (step_rebinds, "IN PLACE"),
    "uphill": (step_uphill, "SGD subtracts"),
    "loss after update": (step_loss_after, "before the update"),
    "no backward": (step_no_backward, "model.backward"),
    "returns nothing": (lambda m, x, y, lr: None if step(m, x, y, lr) else None, "as a float"),
}


def test_correct_train_step_passes():
    assert checks.check_train_step(step) is None
    for seed in (0, 1, 2):
        checks.check_train_step_randomized(step, seed=seed)


@pytest.mark.parametrize("name", sorted(STEP_BUGS))
def test_train_step_bug_is_rejected_with_its_hint(name):
    fn, hint = STEP_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_train_step(fn)
    assert hint in str(err.value)
    with pytest.raises(AssertionError, match="randomized case"):
        checks.check_train_step_randomized(fn, seed=7)

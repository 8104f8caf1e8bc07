"""The lesson 05 checks accept correct code and reject each known bug with its hint."""
import numpy as np
import pytest

from minibn.checks import figure1 as checks
from minibn.experiments.numpy_mlp import softmax_cross_entropy


def band(h, q=(15, 50, 85)):
    return np.percentile(h, q, axis=0)


def band_sorted_by_hand(h, q=(15, 50, 85)):
    # a learner-style version: sort, then interpolate between ranks
    s = np.sort(np.asarray(h, np.float64), axis=0)
    pos = np.asarray(q) / 100 * (len(s) - 1)
    lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
    w = (pos - lo)[:, None]
    return s[lo] * (1 - w) + s[hi] * w


def band_in_place(h, q=(15, 50, 85)):
    h.sort(axis=0)
    return np.percentile(h, q, axis=0)


BAND_BUGS = {
    "axis=1": (lambda h, q=(15, 50, 85): np.percentile(h, q, axis=1), "axis=0"),
    "fractions": (lambda h, q=(15, 50, 85): np.percentile(h, np.asarray(q) / 100, axis=0),
                  "in percent"),
    "nearest rank": (lambda h, q=(15, 50, 85): np.percentile(h, q, axis=0, method="nearest"),
                     "interpolate linearly"),
    "lower rank": (lambda h, q=(15, 50, 85): np.sort(h, axis=0)[(np.asarray(q) * (len(h) - 1)) // 100],
                   "interpolate linearly"),
    "transposed": (lambda h, q=(15, 50, 85): np.percentile(h, q, axis=0).T, "rows"),
    "sorts h in place": (band_in_place, "input mutated"),
}


@pytest.mark.parametrize("fn", [band, band_sorted_by_hand])
def test_correct_percentile_band_passes(fn):
    checks.check_percentile_band(fn)
    for seed in (0, 1, 2):
        checks.check_percentile_band_randomized(fn, seed=seed)


@pytest.mark.parametrize("name", sorted(BAND_BUGS))
def test_percentile_band_bug_is_rejected_with_its_hint(name):
    fn, hint = BAND_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_percentile_band(fn)
    assert hint in str(err.value)
    with pytest.raises(AssertionError, match="randomized case"):
        checks.check_percentile_band_randomized(fn, seed=4)


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

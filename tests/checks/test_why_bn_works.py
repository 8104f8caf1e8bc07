"""Lesson 08 checks accept learner-style solutions and reject each known bug with its hint."""
import numpy as np
import pytest

from minibn.checks import why_bn_works as checks

SEEDS = [0, 1, 2**40 + 7]


# ----------------------------------------------------------------------------- learner solutions

def lp_normalize(x, p, eps=1e-5, *, centre_first=False, centre=True, axis=0, average=True,
                 root=True, signed=False, inplace=False):
    mean = x.mean(axis=axis, keepdims=True)
    base = x - mean if centre_first else x
    if np.isinf(p):
        norm = (base if signed else np.abs(base)).max(axis=axis, keepdims=True)
    else:
        power = np.abs(base) ** p
        norm = power.mean(axis=axis, keepdims=True) if average else power.sum(axis=axis, keepdims=True)
        norm = norm ** (1 / p) if root else norm
    if inplace:
        x -= mean
        return x / (norm + eps)
    return ((x - mean) if centre else x) / (norm + eps)


def ics(grad_fn, weights, i, lr, *, moved="before", sign=-1, sequential=False, relative=False):
    g = grad_fn(weights)
    new = list(weights)
    layers = {"before": range(i), "through": range(i + 1), "all": range(len(weights)),
              "after": range(i + 1, len(weights))}[moved]
    for j in layers:
        step = grad_fn(new)[j] if sequential else g[j]
        new[j] = new[j] + sign * lr * step
    g2 = grad_fn(new)[i]
    dist = np.linalg.norm(g[i] - g2)
    cos = (g[i] * g2).sum() / (np.linalg.norm(g[i]) * np.linalg.norm(g2))
    return (dist / np.linalg.norm(g[i]) if relative else dist), cos


def ics_mutating(grad_fn, weights, i, lr):
    g = grad_fn(weights)
    for j in range(i):
        weights[j] -= lr * g[j]
    g2 = grad_fn(weights)[i]
    return np.linalg.norm(g[i] - g2), (g[i] * g2).sum() / (np.linalg.norm(g[i]) * np.linalg.norm(g2))


def along(loss_fn, grad_fn, theta, lr, multipliers, *, sign=-1, use_lr=True, relative=False):
    g = grad_fn(theta)
    losses, changes = [], []
    for m in multipliers:
        t = theta + sign * (m * lr if use_lr else m) * g
        losses.append(loss_fn(t))
        d = np.linalg.norm(grad_fn(t) - g)
        changes.append(d / np.linalg.norm(g) if relative else d)
    return np.array(losses), np.array(changes)


def _with(fn, **kw):
    return lambda *args: fn(*args, **kw)


LP_BUGS = {
    "norm after centring": (_with(lp_normalize, centre_first=True), "*before* the mean shift"),
    "no centring": (_with(lp_normalize, centre=False), "mean was not subtracted"),
    "per sample": (_with(lp_normalize, axis=1), "per sample"),
    "sum not mean": (_with(lp_normalize, average=False), "*average*"),
    "no root": (_with(lp_normalize, root=False), "root is missing"),
    "signed max": (_with(lp_normalize, signed=True), "max |x|"),
    "mutates x": (_with(lp_normalize, inplace=True), "modified its input x in place"),
}

ICS_BUGS = {
    "layer i moved": (_with(ics, moved="through"), "layer i itself was updated"),
    "all moved": (_with(ics, moved="all"), "every layer was updated"),
    "later layers moved": (_with(ics, moved="after"), "layers *after* i"),
    "uphill": (_with(ics, sign=+1), "uphill"),
    "sequential": (_with(ics, sequential=True), "recomputed"),
    "relative": (_with(ics, relative=True), "relative distance"),
    "mutates weights": (ics_mutating, "modified its input weights[0] in place"),
}

ALONG_BUGS = {
    "uphill": (_with(along, sign=+1), "moved uphill"),
    "no lr": (_with(along, use_lr=False), "units of the learning rate"),
    "relative": (_with(along, relative=True), "not divided by ||g||"),
}


def test_correct_solutions_pass_public_and_randomized_checks():
    checks.check_lp_normalize(lp_normalize)
    checks.check_internal_covariate_shift(ics)
    checks.check_loss_along_gradient(along)
    for seed in SEEDS:
        checks.check_lp_normalize_randomized(lp_normalize, seed=seed)
        checks.check_internal_covariate_shift_randomized(ics, seed=seed)
        checks.check_loss_along_gradient_randomized(along, seed=seed)


@pytest.mark.parametrize("check,bugs", [(checks.check_lp_normalize, LP_BUGS),
                                        (checks.check_internal_covariate_shift, ICS_BUGS),
                                        (checks.check_loss_along_gradient, ALONG_BUGS)],
                         ids=["lp_normalize", "ics", "loss_along_gradient"])
def test_each_bug_is_rejected_with_its_hint(check, bugs):
    for name, (fn, hint) in bugs.items():
        with pytest.raises(AssertionError) as err:
            check(fn)
        assert hint in str(err.value), f"{name}: {err.value}"


@pytest.mark.parametrize("check,bugs", [(checks.check_lp_normalize_randomized, LP_BUGS),
                                        (checks.check_internal_covariate_shift_randomized, ICS_BUGS),
                                        (checks.check_loss_along_gradient_randomized, ALONG_BUGS)],
                         ids=["lp_normalize", "ics", "loss_along_gradient"])
def test_randomized_checks_reject_every_bug_and_name_the_seed(check, bugs):
    for name, (fn, _) in bugs.items():
        with pytest.raises(AssertionError, match="seed 3"):
            check(fn, seed=3)


def test_layer_zero_must_show_no_shift():
    def shifted(grad_fn, weights, i, lr):
        return ics(grad_fn, weights, i, lr, moved="through")
    with pytest.raises(AssertionError):
        checks.check_internal_covariate_shift(shifted)


def test_checks_return_none_and_write_nothing_to_stderr(capsys):
    assert checks.check_lp_normalize(lp_normalize) is None
    assert checks.check_internal_covariate_shift(ics) is None
    assert checks.check_loss_along_gradient(along) is None
    assert capsys.readouterr().err == ""


def test_a_wrong_return_type_gets_a_clear_message():
    with pytest.raises(AssertionError, match="must return a tuple"):
        checks.check_internal_covariate_shift(lambda g, w, i, lr: 0.0)
    with pytest.raises(AssertionError, match="ndarray"):
        checks.check_lp_normalize(lambda x, p, eps=1e-5: x.tolist())

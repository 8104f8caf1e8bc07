"""Lesson 09 checks: the instructor's solutions pass every case, public cases show every kind of
hidden input, and each known bug is rejected with its hint."""
import inspect

import numpy as np
import pytest

from minibn.checks import _core
from minibn.checks import beyond_one_batch as checks

EXERCISES = {ex.name: ex for ex in checks.EXERCISES}


@pytest.fixture(scope="module")
def solution():
    from tests.checks.test_exercises import _solution_functions

    return _solution_functions("09-beyond-one-batch")


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_solution_passes_public_and_hidden_cases(solution, name):
    exercise = EXERCISES[name]
    exercise.check(solution[name])
    for seed in range(200):
        exercise.check_randomized(solution[name], seed=seed)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_public_cases_cover_every_kind_of_hidden_input(name):
    exercise = EXERCISES[name]
    public = set().union(*(_core.properties(c) for c in exercise.public_cases()))
    missing = {label: case.description for seed in range(300) for case in exercise.hidden_cases(seed)
               for label in _core.properties(case) - public}
    assert not missing, f"{name}: hidden cases use inputs no public case shows: {missing}"


def test_hidden_cases_include_layer_norm_instance_norm_and_empty_shards():
    gn = [c for s in range(20) for c in checks.GN_FORWARD.hidden_cases(s)]
    assert any(c["num_groups"] == 1 for c in gn)
    assert any(c["num_groups"] == c["x"].shape[1] > 1 for c in gn)
    assert any(c["x"].dtype == np.float32 for c in gn)
    shards = [c["sizes"] for s in range(20) for c in checks.MERGE.hidden_cases(s)]
    assert all(sizes[:2] == (0, 0) for sizes in shards[::5]), "two empty shards meet in case 0"
    assert len({len(sizes) for sizes in shards}) > 2
    orders = {c["order"] for c in checks.MERGE.public_cases()}
    assert orders == {"ring", "tree"}


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_check_functions_have_one_shape(name):
    exercise = EXERCISES[name]
    public = getattr(checks, f"check_{name}")
    hidden = getattr(checks, f"check_{name}_randomized")
    assert public.exercise is hidden.exercise is exercise
    assert list(inspect.signature(hidden).parameters) == [name, "seed"]
    with pytest.raises(AssertionError, match="must be a function"):
        hidden(None, seed=1)


# ------------------------------------------------------------------------------- known bugs

def _gn(x, g, gamma, beta, eps=1e-5, axes=(2,), ddof=0):
    n, c = x.shape[:2]
    rows = x.reshape(n, g, -1)
    mean = rows.mean(axis=axes, keepdims=True)
    var = rows.var(axis=axes, keepdims=True, ddof=ddof)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return ((rows - mean) / np.sqrt(var + eps)).reshape(x.shape) * gamma.reshape(shape) + beta.reshape(shape)


@pytest.mark.parametrize("bug, hint", [
    (lambda x, g, ga, be, eps=1e-5: _gn(x, g, ga, be, eps, axes=(0, 2)), "whole batch"),
    (lambda x, g, ga, be, eps=1e-5: _gn(x, g, ga, be, eps, ddof=1), "unbiased"),
    (lambda x, g, ga, be, eps=1e-5: _gn(x, x.shape[1], ga, be, eps), "instance norm"),
])
def test_group_norm_forward_bugs_get_their_hint(bug, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_group_norm_forward(bug)


def test_group_norm_backward_with_constant_statistics_gets_its_hint(solution):
    def frozen(dout, x, g, gamma, eps=1e-5):
        dx, dgamma, dbeta = solution["group_norm_backward"](dout, x, g, gamma, eps)
        n, c = x.shape[:2]
        rows = x.reshape(n, g, -1)
        inv = 1 / np.sqrt(rows.var(axis=2, keepdims=True) + eps)
        shape = (1, c) + (1,) * (x.ndim - 2)
        return (dout * gamma.reshape(shape)).reshape(n, g, -1).__mul__(inv).reshape(x.shape), dgamma, dbeta

    with pytest.raises(AssertionError, match="dx .*constants"):
        checks.check_group_norm_backward(frozen)


def _merge(a, b, weighted=True, between=True, guard=True):
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    if guard and (na == 0 or nb == 0):
        return b if na == 0 else a
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (na * ma + nb * mb) / n if weighted else (ma + mb) / 2
        m2 = m2a + m2b + ((mb - ma) ** 2 * na * nb / n if between else 0)
    return n, mean, m2


@pytest.mark.parametrize("kwargs, message", [
    ({"weighted": False}, "without their counts"),
    ({"between": False}, "between"),
    ({"guard": False}, "empty shard"),
])
def test_merge_bugs_get_their_message(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_merge_moments(lambda a, b: _merge(a, b, **kwargs))


def test_power_sums_merge_fails_only_through_cancellation():
    """A merge through (n, sum x, sum x^2) is right in exact arithmetic; the mean-1e6 case shows
    its cancellation (float64 sums of squares near 1e13 keep M2 ~ 9 only to about 1e-3)."""
    def power_sums(a, b):
        (na, ma, m2a), (nb, mb, m2b) = a, b
        n = na + nb
        if n == 0:
            return a
        s = na * ma + nb * mb
        q = (m2a + na * ma**2) + (m2b + nb * mb**2)
        return n, s / n, q - s * s / n

    with pytest.raises(AssertionError, match="m2 is wrong .*mean 1e6"):
        checks.check_merge_moments(power_sums)


def test_shard_moments_of_an_empty_share_are_zeros():
    count, mean, m2 = checks.shard_moments(np.zeros((0, 3, 2)))
    assert count == 0 and mean.tolist() == [0, 0, 0] and m2.tolist() == [0, 0, 0]


def _renorm(mb, vb, mr, vr, rmax, dmax, eps=1e-5, low=None, sign=1.0):
    s = np.sqrt(vr + eps)
    return (np.clip(np.sqrt(vb + eps) / s, 1 / rmax if low is None else low, rmax),
            np.clip(sign * (mb - mr) / s, -dmax, dmax))


@pytest.mark.parametrize("kwargs, hint", [({"low": 0.0}, r"\[0, rmax\]"), ({"sign": -1.0}, "wrong sign")])
def test_renorm_bugs_get_their_hint(kwargs, hint):
    with pytest.raises(AssertionError, match=hint):
        checks.check_renorm_correction(lambda *a: _renorm(*a, **kwargs))


def test_renorm_public_cases_clip_and_the_plain_bn_case_is_identity():
    cases = checks.RENORM.public_cases()
    args = lambda c: (c["batch_mean"], c["batch_var"], c["running_mean"], c["running_var"],  # noqa: E731
                      c["rmax"], c["dmax"])
    r, d = _renorm(*args(cases[1]))
    assert (r == 1.5).any() or (r == 1 / 1.5).any()
    assert (np.abs(d) == 0.5).any()
    r, d = _renorm(*args(cases[2]))
    assert np.all(r == 1) and np.all(d == 0)

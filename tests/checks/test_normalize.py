"""The lesson 01 checks accept the reference and reject every known bug with the right hint."""
import math

import numpy as np
import pytest

from minibn import functional as ref
from minibn.functional import BatchNormCache
from minibn.checks import normalize as checks

from . import buggy

SEEDS = [0, 1, 2015, 2**40 + 7]


def test_reference_forward_passes_public_check():
    assert checks.check_batchnorm_forward(ref.batchnorm_forward) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_forward_passes_randomized_check(seed):
    assert checks.check_batchnorm_forward_randomized(ref.batchnorm_forward, seed=seed) is None


def test_a_learner_style_forward_passes():
    # Not the reference: plain x.mean/x.var with keepdims, the way the lesson teaches it.
    checks.check_batchnorm_forward(buggy.correct_forward)
    checks.check_batchnorm_forward_randomized(buggy.correct_forward, seed=5)


@pytest.mark.parametrize("name", sorted(buggy.FORWARD_BUGS))
def test_forward_bug_is_rejected_with_its_hint(name):
    fn, hint = buggy.FORWARD_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_batchnorm_forward(fn)
    assert hint in str(err.value)


@pytest.mark.parametrize("name", ["ddof=1", "eps outside sqrt", "per sample", "whole tensor",
                                  "gamma/beta swapped", "mutates x"])
def test_forward_bug_is_rejected_by_randomized_check(name):
    fn, _ = buggy.FORWARD_BUGS[name]
    with pytest.raises(AssertionError, match="randomized case"):
        checks.check_batchnorm_forward_randomized(fn, seed=3)


def test_wrong_answer_message_names_quantity_index_values_and_tolerance():
    fn, _ = buggy.FORWARD_BUGS["ddof=1"]
    with pytest.raises(AssertionError) as err:
        checks.check_batchnorm_forward(fn)
    msg = str(err.value)
    assert msg.startswith("out is wrong at index (")
    assert "x of shape (4, 5)" in msg  # the case, so the learner can reproduce it
    assert "expected " in msg and "received " in msg
    assert "tolerance atol=1e-09 + rtol=1e-07*|expected|" in msg


def test_hard_coded_public_outputs_pass_public_but_fail_randomized():
    cheat = buggy.hard_coded(checks.check_batchnorm_forward, buggy.correct_forward,
                             lambda x, g, b, eps=1e-5: (np.zeros_like(x), None))
    checks.check_batchnorm_forward(cheat)  # the visible test is fooled...
    for seed in SEEDS:  # ...every hidden one is not
        with pytest.raises(AssertionError, match="randomized case"):
            checks.check_batchnorm_forward_randomized(cheat, seed=seed)


def test_noisy_but_correct_learner_code_passes_silently(capfd):
    assert checks.check_batchnorm_forward(buggy.forward_warns_and_is_right) is None
    out, err = capfd.readouterr()
    assert err == ""


def test_failing_check_writes_nothing_to_stderr(capfd):
    with pytest.raises(AssertionError):
        checks.check_batchnorm_forward(buggy.FORWARD_BUGS["warns and is wrong"][0])
    assert capfd.readouterr().err == ""


def test_learner_exception_propagates_unchanged():
    def stub(x, gamma, beta, eps=1e-5):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        checks.check_batchnorm_forward(stub)


def test_not_a_function_is_rejected():
    with pytest.raises(AssertionError, match="must be a function"):
        checks.check_batchnorm_forward(None)


def test_randomized_without_seed_uses_grading_secret(monkeypatch):
    monkeypatch.setenv("MINIBN_GRADING_SECRET", "s3cret")
    monkeypatch.setenv("MINIBN_STUDENT_ID", "alice")
    checks.check_batchnorm_forward_randomized(ref.batchnorm_forward)


# ---------------------------------------------------------------- channel_stats

def test_reference_stats_pass():
    checks.check_channel_stats(buggy.correct_stats)
    for seed in SEEDS:
        checks.check_channel_stats_randomized(buggy.correct_stats, seed=seed)


@pytest.mark.parametrize("name", sorted(buggy.STATS_BUGS))
def test_stats_bug_is_rejected_with_its_hint(name):
    fn, hint = buggy.STATS_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_channel_stats(fn)
    assert hint in str(err.value)


def test_hard_coded_stats_fail_randomized():
    cheat = buggy.hard_coded(checks.check_channel_stats, buggy.correct_stats,
                             lambda x: (np.zeros(x.shape[1], x.dtype), np.ones(x.shape[1], x.dtype)))
    checks.check_channel_stats(cheat)
    with pytest.raises(AssertionError, match="randomized case"):
        checks.check_channel_stats_randomized(cheat, seed=11)


def test_any_summation_order_of_a_correct_mean_passes():
    # Summing in another order moves the mean by an ulp or two of |x|; at mean 1e7 that is
    # visible in x_hat, and a correct answer must still pass. This one is correctly rounded.
    def exact_channel_means(a):
        rows = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).astype(np.float64)
        return np.array([math.fsum(row) / row.size for row in rows]).astype(a.dtype)

    def forward_exact_mean(x, gamma, beta, eps=1e-5):
        if x.size == x.shape[1]:
            raise ValueError("Expected more than 1 value per channel when training")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        d = x - exact_channel_means(x).reshape(shape)
        var = exact_channel_means(d * d)
        inv_std = 1 / np.sqrt(var + eps)
        x_hat = d * inv_std.reshape(shape)
        return gamma.reshape(shape) * x_hat + beta.reshape(shape), BatchNormCache(
            x, x_hat, exact_channel_means(x), var, inv_std, gamma, eps)

    checks.check_batchnorm_forward(forward_exact_mean)
    for seed in SEEDS:
        checks.check_batchnorm_forward_randomized(forward_exact_mean, seed=seed)

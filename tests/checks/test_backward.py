"""The lesson 02 checks accept the reference and reject every known bug with the right hint."""
import pytest

from minibn import functional as ref
from minibn.checks import backward as checks

from . import buggy

SEEDS = [0, 1, 2015]
FULL = [
    ("batchnorm_backward", checks.check_batchnorm_backward,
     checks.check_batchnorm_backward_randomized),
    ("batchnorm_backward_graph", checks.check_batchnorm_backward_graph,
     checks.check_batchnorm_backward_graph_randomized),
]


@pytest.mark.parametrize("fn", [ref.batchnorm_backward, ref.batchnorm_backward_graph,
                                buggy.correct_backward])
@pytest.mark.parametrize("name,check,randomized", FULL)
def test_correct_backward_passes_every_check(fn, name, check, randomized):
    assert check(fn) is None
    for seed in SEEDS:
        assert randomized(fn, seed=seed) is None


def test_correct_frozen_stats_passes():
    assert checks.check_batchnorm_backward_frozen_stats(buggy.correct_frozen) is None
    for seed in SEEDS:
        checks.check_batchnorm_backward_frozen_stats_randomized(buggy.correct_frozen, seed=seed)


@pytest.mark.parametrize("name", sorted(buggy.BACKWARD_BUGS))
@pytest.mark.parametrize("check", [checks.check_batchnorm_backward,
                                   checks.check_batchnorm_backward_graph])
def test_backward_bug_is_rejected_with_its_hint(check, name):
    fn, hint = buggy.BACKWARD_BUGS[name]
    with pytest.raises(AssertionError) as err:
        check(fn)
    assert hint in str(err.value)


@pytest.mark.parametrize("name", ["missing mean path", "missing variance path",
                                  "gamma missing in dx", "dgamma/dbeta swapped", "mutates dout"])
def test_backward_bug_is_rejected_by_randomized_check(name):
    fn, _ = buggy.BACKWARD_BUGS[name]
    with pytest.raises(AssertionError, match="randomized case"):
        checks.check_batchnorm_backward_randomized(fn, seed=4)


def test_missing_mean_path_reports_the_sum_of_dx():
    with pytest.raises(AssertionError) as err:
        checks.check_batchnorm_backward(buggy.BACKWARD_BUGS["missing mean path"][0])
    msg = str(err.value)
    assert msg.startswith("dx is wrong at index (")
    assert "Per-channel sum of dx" in msg and "must be 0" in msg
    assert "expected " in msg and "received " in msg and "tolerance atol=" in msg


def test_param_bug_names_the_parameter():
    with pytest.raises(AssertionError, match=r"^dgamma is wrong at index \(\d+,\)"):
        checks.check_batchnorm_backward(buggy.BACKWARD_BUGS["dgamma from x"][0])


@pytest.mark.parametrize("name", sorted(buggy.FROZEN_BUGS))
def test_frozen_bug_is_rejected_with_its_hint(name):
    fn, hint = buggy.FROZEN_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_batchnorm_backward_frozen_stats(fn)
    assert hint in str(err.value)


def test_hard_coded_backward_passes_public_but_fails_randomized():
    cheat = buggy.hard_coded(checks.check_batchnorm_backward, buggy.correct_backward,
                             buggy.BACKWARD_BUGS["missing mean path"][0])
    checks.check_batchnorm_backward(cheat)
    for seed in SEEDS:
        with pytest.raises(AssertionError, match="randomized case"):
            checks.check_batchnorm_backward_randomized(cheat, seed=seed)


def test_noisy_but_correct_backward_passes_silently(capfd):
    def noisy(dout, cache):
        import numpy as np
        np.log(-np.ones(1))  # RuntimeWarning
        return ref.batchnorm_backward(dout, cache)

    assert checks.check_batchnorm_backward(noisy) is None
    assert capfd.readouterr().err == ""

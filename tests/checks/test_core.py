"""The building blocks of every check: messages, hints, silence and the grading seed."""
import sys
import warnings

import numpy as np
import pytest

from minibn.checks._core import (
    Case,
    Hint,
    assert_close,
    assert_unchanged,
    fmt,
    grading_seed,
    quiet,
    unpack,
)

CASE = Case("x of shape (2, 3)", {"x": np.zeros((2, 3))}, {"eps": 1e-5})


def test_case_lookup():
    assert CASE["eps"] == 1e-5 and CASE["x"].shape == (2, 3)


def test_assert_close_passes_within_tolerance():
    want = np.array([[1.0, 2.0, 3.0]])
    assert assert_close("out", want + 1e-10, want, CASE, atol=1e-9, rtol=0) is None


def test_message_points_at_the_worst_index():
    want = np.arange(6.0).reshape(2, 3)
    got = want.copy()
    got[0, 1] += 0.01
    got[1, 2] += 0.5
    with pytest.raises(AssertionError) as err:
        assert_close("dx", got, want, CASE, atol=1e-6, rtol=1e-4)
    msg = str(err.value)
    assert msg.startswith("dx is wrong at index (1, 2) (x of shape (2, 3)): expected 5, received 5.5")
    assert "|error| 0.5" in msg and "tolerance atol=1e-06 + rtol=0.0001*|expected|" in msg


def test_hint_is_given_only_when_the_answer_matches_the_bug():
    want = np.ones(3)
    bug = Hint(np.full(3, 2.0), "you doubled it")
    with pytest.raises(AssertionError, match="Hint: you doubled it"):
        assert_close("var", np.full(3, 2.0), want, CASE, atol=1e-9, rtol=1e-7, hints=[bug])
    with pytest.raises(AssertionError) as err:
        assert_close("var", np.full(3, 3.0), want, CASE, atol=1e-9, rtol=1e-7, hints=[bug])
    assert "Hint" not in str(err.value)


def test_nan_is_reported_with_its_index():
    got = np.ones((2, 2))
    got[1, 0] = np.nan
    with pytest.raises(AssertionError, match=r"out contains NaN or inf, first at index \(1, 0\)"):
        assert_close("out", got, np.ones((2, 2)), CASE, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("received,expected_text", [
    ([1.0, 2.0], "must be a NumPy ndarray, got list"),
    (np.array([1.0, 2.0]).view(type("Lookalike", (np.ndarray,), {})),
     "must be a NumPy ndarray, got Lookalike"),
    (np.float64(1.0), "must be a NumPy ndarray, got float64"),
    (None, "must be a NumPy ndarray, got NoneType"),
])
def test_anything_but_a_plain_ndarray_is_rejected(received, expected_text):
    with pytest.raises(AssertionError, match=expected_text):
        assert_close("mean", received, np.array([1.0, 2.0]), CASE, atol=1, rtol=1)


def test_shape_and_dtype_messages():
    with pytest.raises(AssertionError, match=r"mean has shape \(2, 3\), expected \(3,\).*"
                                             r"reduce over every axis except the channel axis 1"):
        assert_close("mean", np.zeros((2, 3)), np.zeros(3), CASE, atol=1, rtol=1)
    with pytest.raises(AssertionError, match=r"dx has shape \(2, 3\), expected \(2, 3, 4\).*"
                                             "keepdims=True"):
        assert_close("dx", np.zeros((2, 3)), np.zeros((2, 3, 4)), CASE, atol=1, rtol=1)
    with pytest.raises(AssertionError, match="has dtype float64, expected float32"):
        assert_close("out", np.zeros(3), np.zeros(3), CASE, atol=1, rtol=1, dtype=np.float32)


def test_comparison_survives_a_patched_numpy(monkeypatch):
    # A solution cell that patches numpy after the checks are imported must not fool them.
    monkeypatch.setattr(np, "abs", lambda a: np.zeros_like(a))
    monkeypatch.setattr(np, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(np, "isnan", lambda a: np.ones(np.shape(a), bool))
    monkeypatch.setattr(np, "array", lambda *a, **k: np.zeros(3))
    with pytest.raises(AssertionError, match="is wrong"):
        assert_close("out", np.ones(3), np.zeros(3), CASE, atol=1e-9, rtol=1e-7)


def test_quiet_swallows_warnings_and_stderr(capfd):
    with quiet():
        warnings.warn("noisy", UserWarning)
        print("to stderr", file=sys.stderr)
        np.ones(1) / np.zeros(1)
    assert capfd.readouterr().err == ""


def test_quiet_appends_the_warnings_to_a_failure(capfd):
    with pytest.raises(AssertionError) as err:
        with quiet():
            np.log(np.zeros(1))
            raise AssertionError("out is wrong")
    assert str(err.value).startswith("out is wrong\n(Your code warned: RuntimeWarning: divide by")
    assert capfd.readouterr().err == ""


def test_quiet_lets_other_errors_through():
    with pytest.raises(NotImplementedError):
        with quiet():
            raise NotImplementedError()


def test_unpack_and_unchanged():
    assert unpack((1, 2), "f", 2, ["a", "b"]) == (1, 2)
    with pytest.raises(AssertionError, match=r"f must return a tuple \(a, b\), got a tuple of 3"):
        unpack((1, 2, 3), "f", 2, ["a", "b"])
    with pytest.raises(AssertionError, match="input mutated"):
        assert_unchanged("x", np.ones(2), np.zeros(2), CASE, "f")


def test_fmt():
    assert fmt(0) == "0" and fmt(1.5) == "1.5" and fmt(1e-7) == "1.0000e-07"


def test_grading_seed_is_stable_per_student_and_exercise(monkeypatch):
    monkeypatch.setenv("MINIBN_GRADING_SECRET", "s3cret")
    monkeypatch.setenv("MINIBN_STUDENT_ID", "alice")
    a = grading_seed("batchnorm_forward")
    assert a == grading_seed("batchnorm_forward")  # re-grading gives the same cases
    assert a != grading_seed("channel_stats")
    monkeypatch.setenv("MINIBN_STUDENT_ID", "bob")
    assert a != grading_seed("batchnorm_forward")
    monkeypatch.setenv("MINIBN_GRADING_SECRET", "other")
    monkeypatch.setenv("MINIBN_STUDENT_ID", "alice")
    assert a != grading_seed("batchnorm_forward")
    assert 0 <= a < 2**63


def test_grading_seed_reads_the_student_from_the_autograde_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIBN_GRADING_SECRET", "s3cret")
    monkeypatch.delenv("MINIBN_STUDENT_ID", raising=False)
    seeds = []
    for student in ("alice", "bob", "alice"):
        folder = tmp_path / "autograded" / student / "01-normalize"
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(folder)
        seeds.append(grading_seed("batchnorm_forward"))
    assert seeds[0] == seeds[2] != seeds[1]


def test_without_a_secret_every_run_draws_fresh_cases(monkeypatch):
    monkeypatch.delenv("MINIBN_GRADING_SECRET", raising=False)
    assert len({grading_seed("batchnorm_forward") for _ in range(5)}) == 5


def test_extra_length_one_axes_get_the_keepdims_hint():
    """A (1, C, 1, 1) answer has the right values and size: the hint must say drop keepdims,
    not "reduce over every axis except 1" (which the learner already did)."""
    with pytest.raises(AssertionError) as err:
        assert_close("mean", np.zeros((1, 3, 1, 1)), np.zeros(3), CASE, atol=1, rtol=1)
    msg = str(err.value)
    assert "drop keepdims=True" in msg and "return shape (3,)" in msg
    assert "reduce over every axis" not in msg


def test_numbers_that_print_alike_are_printed_with_enough_digits():
    want, got = np.array([1.400250]), np.array([1.400245])
    with pytest.raises(AssertionError) as err:
        assert_close("var", got, want, CASE, atol=1e-9, rtol=1e-7)
    msg = str(err.value)
    expected_text = msg.split("expected ")[1].split(",")[0]
    received_text = msg.split("received ")[1].split(" ")[0]
    assert expected_text != received_text, msg
    assert expected_text == "1.4002500" and received_text == "1.4002450"


def test_per_entry_tolerance_is_reported_at_the_worst_index():
    want = np.zeros((2, 2))
    got = np.array([[0.5, 0.0], [0.0, 0.05]])
    atol = np.array([[1.0], [0.01]])  # row 0 is badly conditioned, row 1 is not
    with pytest.raises(AssertionError) as err:
        assert_close("dx", got, want, CASE, atol=atol, rtol=0)
    assert "at index (1, 1)" in str(err.value) and "atol=0.01" in str(err.value)
    assert assert_close("dx", got[:1], want[:1], CASE, atol=atol[:1], rtol=0) is None


def test_hints_may_be_computed_only_on_failure():
    calls = []

    def hints():
        calls.append(1)
        return [Hint(np.full(3, 2.0), "you doubled it")]

    assert_close("var", np.ones(3), np.ones(3), CASE, atol=1e-9, rtol=1e-7, hints=hints)
    assert calls == []
    with pytest.raises(AssertionError, match="you doubled it"):
        assert_close("var", np.full(3, 2.0), np.ones(3), CASE, atol=1e-9, rtol=1e-7, hints=hints)

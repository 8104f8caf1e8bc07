"""Building blocks shared by every lesson's checks.

A check is a plain function that takes the learner's function, runs it on generated cases and
raises ``AssertionError`` with a message a learner can act on: the quantity, the case, the worst
index, expected vs received, the tolerance and, when the wrong answer matches a known bug, a hint.
The same function runs under pytest against the reference and in nbgrader test cells against the
learner's code, so it must (nbgrader's rules, see shared/autograding.md):

- return ``None`` (a trailing float in a test cell becomes the score);
- print nothing to stderr (any stderr scores the cell 0): ``quiet()`` captures warnings and stderr.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import secrets
import warnings
from dataclasses import dataclass, field

import numpy as np

# Private references taken at import: a solution cell that patches numpy's comparison helpers
# after the checks are imported cannot change what the checks compute.
_asarray = np.asarray
_array = np.array
_isnan = np.isnan
_abs = np.abs
_isfinite = np.isfinite
_argmax = np.argmax
_unravel_index = np.unravel_index
_ndarray = np.ndarray


@dataclass
class Case:
    """One generated input, with a description that lets a learner reproduce it."""

    description: str
    arrays: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.arrays[key] if key in self.arrays else self.params[key]


@dataclass
class Hint:
    """A known bug: if the learner's answer matches ``expected_if_buggy``, say ``message``."""

    expected_if_buggy: object
    message: str


class _Captured:
    def __init__(self):
        self.warnings = []

    def summary(self):
        seen = []
        for w in self.warnings:
            text = f"{w.category.__name__}: {w.message}"
            if text not in seen:
                seen.append(text)
        return "; ".join(seen[:3])


@contextlib.contextmanager
def quiet():
    """Run learner code without letting anything reach stderr.

    Warnings (NumPy's RuntimeWarning on a division by zero, say) are recorded instead of printed;
    if an ``AssertionError`` escapes, the warnings are appended to its message, since they usually
    explain the wrong answer.
    """
    captured = _Captured()
    with warnings.catch_warnings(record=True) as record, contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("always")
        try:
            yield captured
        except AssertionError as err:
            captured.warnings = list(record)
            note = captured.summary()
            if note:
                raise AssertionError(f"{err}\n(Your code warned: {note})") from None
            raise
        captured.warnings = list(record)


def fmt(v):
    """Short, exact-enough text for a number in a message."""
    v = float(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.6g}"
    return f"{v:.4e}"


def as_float64(quantity, received, case):
    """Check ``received`` is a plain ndarray (not a subclass or look-alike) and copy it to float64."""
    if type(received) is not _ndarray:
        raise AssertionError(
            f"{quantity} must be a NumPy ndarray, got {type(received).__name__} ({case.description})"
        )
    return _array(received, dtype=np.float64, copy=True)


def assert_shape(quantity, received, expected_shape, case, hint=""):
    if tuple(received.shape) != tuple(expected_shape):
        raise AssertionError(
            f"{quantity} has shape {tuple(received.shape)}, expected {tuple(expected_shape)} "
            f"({case.description}).{(' Hint: ' + hint) if hint else ''}"
        )


def assert_dtype(quantity, received, expected_dtype, case):
    if received.dtype != expected_dtype:
        raise AssertionError(
            f"{quantity} has dtype {received.dtype}, expected {np.dtype(expected_dtype)} "
            f"({case.description}): keep the input's dtype (a float64 constant such as np.ones "
            "or a Python float array upcasts float32)"
        )


def close_mask(received, expected, atol, rtol):
    with np.errstate(invalid="ignore"):
        return _abs(received - expected) <= atol + rtol * _abs(expected)


def matches(received, expected, atol, rtol):
    received = _asarray(received, dtype=np.float64)
    expected = _asarray(expected, dtype=np.float64)
    if received.shape != expected.shape:
        return False
    both_nan = _isnan(received) & _isnan(expected)
    return bool((close_mask(received, expected, atol, rtol) | both_nan).all())


def assert_close(quantity, received, expected, case, *, atol, rtol, hints=(), dtype=None, note=""):
    """Assert the learner's ``received`` equals ``expected`` within ``atol + rtol * |expected|``.

    The message names the quantity, the case, the worst index with expected vs received, the
    tolerance and the first hint whose buggy answer ``received`` matches.
    """
    expected = _asarray(expected)
    if dtype is not None and type(received) is _ndarray:
        assert_dtype(quantity, received, dtype, case)
    got = as_float64(quantity, received, case)
    want = _asarray(expected, dtype=np.float64)
    assert_shape(quantity, got, want.shape, case, _shape_hint(got.shape, want.shape))
    if not _isfinite(got).all():
        bad = _unravel_index(int(_argmax(~_isfinite(got))), got.shape)
        raise AssertionError(
            f"{quantity} contains NaN or inf, first at index {tuple(int(i) for i in bad)} "
            f"({case.description}).{_pick_hint(got, hints, atol, rtol)}"
        )
    excess = _abs(got - want) - (atol + rtol * _abs(want))
    worst = int(_argmax(excess))
    if excess.reshape(-1)[worst] <= 0:
        return
    idx = tuple(int(i) for i in _unravel_index(worst, got.shape))
    where = f"at index {idx}" if idx else ""
    raise AssertionError(
        f"{quantity} is wrong {where} ({case.description}): expected "
        f"{fmt(want[idx])}, received {fmt(got[idx])} (|error| {fmt(abs(got[idx] - want[idx]))}, "
        f"tolerance atol={atol:g} + rtol={rtol:g}*|expected|)."
        f"{(' ' + note) if note else ''}{_pick_hint(got, hints, atol, rtol)}"
    )


def _shape_hint(got, want):
    if len(want) == 1:  # a per-channel quantity
        return (f"a per-channel quantity has one value per channel, shape (C,) = {tuple(want)}: "
                "reduce over every axis except the channel axis 1")
    if len(got) != len(want):
        return "keep the input's shape: a reduction needs keepdims=True to broadcast back"
    return ""


def _pick_hint(received, hints, atol, rtol):
    for hint in hints:
        if matches(received, hint.expected_if_buggy, max(atol, 1e-9), max(rtol, 1e-6)):
            return f"\nHint: {hint.message}"
    return ""


def require_callable(fn, name):
    if not callable(fn):
        raise AssertionError(f"{name} must be a function, got {type(fn).__name__}")


def unpack(result, name, count, names):
    if not isinstance(result, tuple) or len(result) != count:
        got = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
        raise AssertionError(f"{name} must return a tuple ({', '.join(names)}), got {got}")
    return result


def assert_unchanged(name, array, copy, case, fn_name):
    if not np.array_equal(array, copy, equal_nan=True):
        raise AssertionError(
            f"{fn_name} modified its input {name} in place ({case.description}): "
            "input mutated; compute into new arrays (x -= mu changes the caller's x)"
        )


def grading_seed(exercise):
    """Seed for randomized hidden cases.

    At grading time the instructor sets ``MINIBN_GRADING_SECRET``; the seed is then an HMAC of
    the secret, the student (the autograde folder name) and the exercise, so the cases differ per
    student, stay the same when a notebook is re-graded, and are never stored in a lesson.
    Without a secret (a learner checking their own work) every run draws fresh cases.
    """
    secret = os.environ.get("MINIBN_GRADING_SECRET")
    if not secret:
        return secrets.randbits(63)
    student = os.environ.get("MINIBN_STUDENT_ID") or _student_from_cwd()
    msg = f"{student}\0{exercise}".encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _student_from_cwd():
    # nbgrader autograde runs each notebook with cwd autograded/<student>/<assignment>/.
    parts = os.path.normpath(os.getcwd()).split(os.sep)
    return parts[-2] if len(parts) >= 2 else ""


def channel_shape(ndim, channels):
    return (1, channels) + (1,) * (ndim - 2)


def reduce_axes(ndim):
    return (0,) + tuple(range(2, ndim))

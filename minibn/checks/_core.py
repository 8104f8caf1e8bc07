"""Building blocks shared by every lesson's checks.

A check is a plain function that takes the learner's function, runs it on generated cases and
raises ``AssertionError`` with a message a learner can act on: the quantity, the case, the worst
index, expected vs received, the tolerance and, when the wrong answer matches a known bug, a hint.
The same function runs under pytest against the reference and in nbgrader test cells against the
learner's code, so it must (nbgrader's scoring rules, see docs/grading.md):

- return ``None`` (a trailing float in a test cell becomes the score);
- print nothing to stderr (any stderr scores the cell 0): ``quiet()`` captures warnings and stderr.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import math
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


def fmt(v, digits=6):
    """Short, exact-enough text for a number in a message (``digits`` > 6 keeps trailing zeros,
    so two numbers printed side by side show the same number of digits)."""
    v = float(v)
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:#.{digits}g}" if digits > 6 and v != 0 else f"{v:.{digits}g}"
    return f"{v:.{max(digits - 2, 4)}e}"


def fmt_pair(a, b):
    """``a`` and ``b`` with enough digits to show their difference to two significant digits.

    "expected 1.40025, received 1.40024" hides whether they differ by 1e-5 or by 1e-6; with the
    difference resolved ("1.4002483, received 1.4002431") the learner can see how far off it is.
    """
    a, b = float(a), float(b)
    digits = 6
    if a != b and math.isfinite(a) and math.isfinite(b):
        scale = max(abs(a), abs(b))
        digits = min(17, max(6, int(math.ceil(math.log10(scale / abs(a - b)))) + 2))
    return fmt(a, digits), fmt(b, digits)


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
    tolerance and the first hint whose buggy answer ``received`` matches. ``atol`` may be an
    array broadcasting against ``expected`` (a tolerance that follows each entry's
    conditioning); ``hints`` may be a function returning the hints, called only on a failure.
    """
    expected = _asarray(expected)
    if dtype is not None and type(received) is _ndarray:
        assert_dtype(quantity, received, dtype, case)
    got = as_float64(quantity, received, case)
    want = _asarray(expected, dtype=np.float64)
    assert_shape(quantity, got, want.shape, case, _shape_hint(got.shape, want.shape))
    atol_full = np.broadcast_to(_asarray(atol, dtype=np.float64), want.shape)
    if not _isfinite(got).all():
        bad = _unravel_index(int(_argmax(~_isfinite(got))), got.shape)
        raise AssertionError(
            f"{quantity} contains NaN or inf, first at index {tuple(int(i) for i in bad)} "
            f"({case.description}).{_pick_hint(got, hints, atol_full, rtol)}"
        )
    excess = _abs(got - want) - (atol_full + rtol * _abs(want))
    worst = int(_argmax(excess))
    if excess.reshape(-1)[worst] <= 0:
        return
    idx = tuple(int(i) for i in _unravel_index(worst, got.shape))
    where = f"at index {idx}" if idx else ""
    shown_want, shown_got = fmt_pair(want[idx], got[idx])
    raise AssertionError(
        f"{quantity} is wrong {where} ({case.description}): expected "
        f"{shown_want}, received {shown_got} (|error| {fmt(abs(got[idx] - want[idx]))}, "
        f"tolerance atol={float(atol_full[idx]):g} + rtol={rtol:g}*|expected|)."
        f"{(' ' + note) if note else ''}{_pick_hint(got, hints, atol_full, rtol)}"
    )


def _shape_hint(got, want):
    squeezed = tuple(d for d in got if d != 1)
    if len(got) > len(want) and squeezed == tuple(d for d in want if d != 1):
        return (f"the values are there but with extra length-1 axes: drop keepdims=True (or "
                f"reshape) and return shape {tuple(want)}")
    if len(want) == 1:  # a per-channel quantity
        return (f"a per-channel quantity has one value per channel, shape (C,) = {tuple(want)}: "
                "reduce over every axis except the channel axis 1")
    if len(got) != len(want):
        return "keep the input's shape: a reduction needs keepdims=True to broadcast back"
    return ""


def _pick_hint(received, hints, atol, rtol):
    if callable(hints):
        hints = hints()
    atol = np.maximum(atol, 1e-9)
    for hint in hints:
        expected = _asarray(hint.expected_if_buggy, dtype=np.float64)
        if expected.shape != received.shape:
            continue
        if matches(received, expected, np.broadcast_to(atol, expected.shape), max(rtol, 1e-6)):
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


# How many roundings of x - mean a correct batch norm may carry into its results: measured at
# under 4 for dx and 1.2 for dgamma over 10,000 seeds of lesson 02's hidden cases (graph and
# closed-form backward), and 10,000 seeds of lesson 04's and 06's stay inside it.
CONDITIONING_FACTOR = 16


def conditioned_atols(x, gamma, dout, eps, base, dtype=None):
    """Per-channel absolute tolerances ``(out, dx, dgamma)`` for a training-mode batch norm of
    ``x`` computed in ``dtype`` (default: x's), ``base`` plus what each channel's conditioning
    costs every correct implementation (torch's too).

    Where a channel's values sit far from zero relative to their spread (|mean| >> std, or two
    values close together), x - mean loses digits: x_hat and inv_std carry an error of about
    eps_dtype * kappa, kappa = max|x| / sqrt(var + eps). So out may be off by |gamma| times that,
    dx by |gamma| / std * max|dout| times it and dgamma by sum|dout| times it. ``out`` and ``dx``
    have x's channel shape (they broadcast against x); ``dgamma`` is (C,).
    """
    dtype = _asarray(x).dtype if dtype is None else dtype
    x = _asarray(x, np.float64)
    axes, shape = reduce_axes(x.ndim), channel_shape(x.ndim, x.shape[1])
    std = np.sqrt(x.var(axis=axes) + eps)
    unit = CONDITIONING_FACTOR * np.finfo(dtype).eps * _abs(x).max(axis=axes) / std
    gamma = _abs(_asarray(gamma, np.float64))
    dout = _abs(_asarray(dout, np.float64))
    return (base + (unit * gamma).reshape(shape),
            base + (unit * gamma / std * dout.max(axis=axes)).reshape(shape),
            base + unit * dout.sum(axis=axes))


# ----------------------------------------------------------------------------------------------
# One shape for every exercise


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: its cases, how one case is checked, and the two checks built from them.

    - ``name``: the learner's function (or class) as the lesson names it. It names the learner's
      object in messages and keys the grading seed (``grading_seed(name)``), so it must not change
      once a course has been graded.
    - ``public_cases()``: the visible cases, a list of ``Case``. They must show every kind of input
      the hidden cases use (``tests/checks/test_exercises.py`` checks it with ``properties``).
    - ``randomized_cases(seed)``: the hidden cases for one seed, a list of ``Case``; their
      descriptions say what the case is, and the check prefixes "randomized case i of seed S".
    - ``check_case(fn, case)``: runs the learner's ``fn`` on one case and compares (expected value,
      tolerance and hints live there); raises ``AssertionError`` with the message.
    - ``extra_checks``: functions ``fn -> None`` run after the public cases (a gradient check,
      invariants, error handling), not part of the hidden set.
    - ``require``: validates the learner's object before anything runs (default: callable).
    - ``summary``: one line for the docstrings: what the learner's function does.

    - ``compute(obj, case) -> answers`` and ``judge(answers, case)``, instead of ``check_case``,
      for an exercise whose learner object is not arrays in, arrays out (a class, a function of a
      model). ``compute`` only runs the learner's object on the case and returns plain data
      (NumPy arrays, numbers, strings, lists and dicts of them); it may raise ``AssertionError``
      to *fail* the case, but every decision that passes it is ``judge``'s, which sees only the
      answers and the case. ``check_case`` is then ``judge(compute(obj, case), case)``. At grading
      time the two halves run in different processes: ``compute`` in the sandbox, next to the
      learner's object, on the case it rebuilds from ``(which, index, seed)``; ``judge`` in the
      grader (see docs/grading.md, "Answers that are not data"). An exception the learner's code
      raises in a later step is kept as ``answers["raised"]`` and re-raised by ``answer()`` where
      ``judge`` reaches that step, so the messages come in the same order as in one process.

    ``checks()`` returns ``(check_X, check_X_randomized)``: plain functions with docstrings whose
    parameter is named after the learner's function, run inside one ``quiet()`` scope each.
    """

    name: str
    public_cases: object
    randomized_cases: object
    check_case: object
    summary: str = ""
    extra_checks: tuple = ()
    require: object = None
    compute: object = None
    judge: object = None

    def __post_init__(self):
        if (self.compute is None) != (self.judge is None):
            raise ValueError(f"exercise {self.name}: give both compute and judge, or neither")
        if self.compute is not None and self.check_case is None:
            object.__setattr__(self, "check_case", lambda fn, case: self.judge(self.compute(fn, case), case))
        if self.check_case is None:
            raise ValueError(f"exercise {self.name}: give check_case, or compute and judge")

    def _require(self, fn):
        remote = _remote(fn) if self.compute is not None else None
        if remote is not None:
            remote(self, "require", 0, None)
        elif self.require is not None:
            self.require(fn)
        else:
            require_callable(fn, self.name)

    def _run(self, fn, which, index, case, seed=None):
        remote = _remote(fn) if self.compute is not None else None
        if remote is None:
            return self.check_case(fn, case)
        self.judge(remote(self, which, index, seed), case)

    def _run_extra(self, fn, index, extra):
        remote = _remote(fn) if isinstance(extra, Split) else None
        if remote is None:
            return extra(fn)
        extra.judge(remote(self, "extra", index, None))

    def hidden_cases(self, seed):
        """The randomized cases for ``seed``, each description naming the case and the seed."""
        cases = []
        for i, case in enumerate(self.randomized_cases(seed)):
            cases.append(Case(f"randomized case {i} of seed {seed}: {case.description}",
                              case.arrays, case.params))
        return cases

    def check(self, fn):
        """Run ``fn`` on every public case, then the extra checks. Returns None."""
        self._require(fn)
        with quiet():
            for i, case in enumerate(self.public_cases()):
                self._run(fn, "public", i, case)
            for i, extra in enumerate(self.extra_checks):
                self._run_extra(fn, i, extra)

    def check_randomized(self, fn, seed=None):
        """Run ``fn`` on the hidden cases of ``seed`` (default: the grading seed). Returns None."""
        self._require(fn)
        seed = grading_seed(self.name) if seed is None else int(seed)
        with quiet():
            for i, case in enumerate(self.hidden_cases(seed)):
                self._run(fn, "hidden", i, case, seed)

    def checks(self, check_name=None, module=None):
        """``(check_X, check_X_randomized)`` for this exercise, X = ``check_name or name``."""
        import inspect

        check_name = check_name or f"check_{self.name}"
        param = self.name if self.name.isidentifier() else "fn"
        ex = self

        def check(fn):
            ex.check(fn)

        def check_randomized(fn, seed=None):
            ex.check_randomized(fn, seed)

        what = f" ({self.summary})" if self.summary else ""
        check.__doc__ = (
            f"Check the learner's ``{self.name}``{what} on the public cases"
            + (" and the extra checks (" + ", ".join(
                (e.__doc__ or e.__name__).strip().splitlines()[0].rstrip(".")
                for e in self.extra_checks) + ")" if self.extra_checks else "")
            + ".\n\nReturns None; raises AssertionError naming the case, the quantity, the worst "
            "index, expected vs received and the tolerance.")
        check_randomized.__doc__ = (
            f"``{check_name}`` on randomized hidden cases: the lesson's hidden test.\n\n"
            f"``seed=None`` derives the seed from the grading secret and the student "
            f"(``grading_seed({self.name!r})``); every failure names the case and the seed, so "
            f"``{check_name}_randomized({param}, seed=S)`` reproduces it. Returns None.")
        for f, suffix in ((check, ""), (check_randomized, "_randomized")):
            f.__name__ = f.__qualname__ = check_name + suffix
            if module:
                f.__module__ = module
            sig = inspect.signature(f)
            params = list(sig.parameters.values())
            params[0] = params[0].replace(name=param)
            f.__signature__ = sig.replace(parameters=params)
            f.exercise = self
        return check, check_randomized


class Split:
    """An extra check in two halves, like an exercise's ``compute`` and ``judge``: ``compute(obj)``
    runs the learner's object and returns plain data, ``judge(answers)`` decides."""

    def __init__(self, compute, judge, doc):
        self.compute, self.judge, self.__doc__, self.__name__ = compute, judge, doc, compute.__name__

    def __call__(self, obj):
        self.judge(self.compute(obj))


def answer(answers, key):
    """``answers[key]``; if ``compute`` stopped before that step, the exception it stopped on."""
    if key in answers:
        return answers[key]
    raised = answers.get("raised")
    if isinstance(raised, BaseException):
        raise raised
    raise AssertionError(f"the answers hold no {key}")


def _remote(obj):
    """The grader's stand-in for a learner object in the sandbox offers ``minibn_compute``
    (``minibn.grading.verdict.RemoteFunction``); a learner's own object never reaches a grader
    check, so in JupyterLab this is always None and everything runs in one process."""
    compute = getattr(type(obj), "minibn_compute", None)
    return None if compute is None else compute.__get__(obj)


def properties(case):
    """The kinds of input a case exercises, as short labels (for "public covers hidden").

    Looks at every array in ``case.arrays`` (and at arrays inside lists, e.g. a list of batches):
    its dtype, its rank, whether it is a non-contiguous view, whether a channel (axis 1) has a
    single value (m = 1) or the batch a single example (N = 1), and whether there is one channel.
    Scalar parameters named ``eps`` add whether eps is large (>= 0.1, where its placement shows).
    A case whose input is not arrays (a model's architecture) names its own kinds in
    ``params["kinds"]``.
    """
    labels = set()

    def arrays(value):
        if isinstance(value, _ndarray) or _is_tensor(value):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from arrays(v)

    for key, value in case.arrays.items():
        for a in arrays(value):
            if _is_tensor(a):
                if not a.dtype.is_floating_point:
                    continue
                labels.add(f"{key}: {str(a.dtype).replace('torch.', '')}")
                contiguous = a.is_contiguous()
            else:
                if a.dtype.kind != "f":
                    continue
                labels.add(f"{key}: {a.dtype.name}")
                contiguous = a.flags.c_contiguous
            labels.add(f"{key}: rank {a.ndim}")
            if not contiguous:
                labels.add(f"{key}: non-contiguous")
            if a.ndim >= 2 and key in _BATCH_KEYS:
                if a.shape[0] == 1:
                    labels.add(f"{key}: N = 1")
                size = int(np.prod(a.shape))
                if size and size // a.shape[1] == 1:
                    labels.add(f"{key}: m = 1 value per channel")
                if a.shape[1] == 1:
                    labels.add(f"{key}: one channel")
    if isinstance(case.params, dict):
        labels.update(str(k) for k in case.params.get("kinds", ()))
    eps = case.params.get("eps") if isinstance(case.params, dict) else None
    if isinstance(eps, (int, float)) and eps >= 0.1:
        labels.add("eps >= 0.1")
    return labels


def _is_tensor(value):
    """A torch tensor, recognised without importing torch (NumPy lessons never load it)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "is_contiguous")


# Arrays laid out (N, C, *spatial), for which N = 1, m = 1 and C = 1 are edge cases.
_BATCH_KEYS = {"x", "dout", "batches"}

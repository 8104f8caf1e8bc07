"""minibn.conventions: each BatchNorm rule, its message, and that it has one home.

The rules are checked against torch where torch has them (its wording, its running-statistics
update), on NumPy arrays and torch tensors alike, since every part of minibn calls these."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minibn import conventions as cv

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape, m", [((4, 3), 4), ((2, 3, 5), 10), ((2, 3, 4, 5), 40),
                                      ((2, 0, 4), 8), ((0, 3, 2), 0), ((3, 2, 0, 2), 0)])
def test_values_per_channel(shape, m):
    assert cv.values_per_channel(shape) == m
    assert cv.values_per_channel(torch.Size(shape)) == m


def test_layout_helpers_on_numpy_and_torch():
    for x in (np.zeros((2, 3, 4, 5)), torch.zeros(2, 3, 4, 5)):
        assert cv.channel_shape(x) == (1, 3, 1, 1)
        assert cv.reduce_axes(x) == (0, 2, 3)
    assert cv.channel_shape(np.zeros((4, 7))) == (1, 7)
    assert cv.reduce_axes(np.zeros((4, 7))) == (0,)
    assert cv.is_cupy(np.zeros(2)) is False and cv.array_namespace(torch.zeros(2)) is np


def test_batch_size_rule_and_message_are_torchs():
    with pytest.raises(ValueError) as theirs:
        TF.batch_norm(torch.ones(1, 3, 1, 1), None, None, training=True)
    with pytest.raises(ValueError) as ours:
        cv.check_batch_size(torch.Size([1, 3, 1, 1]), allow_empty=True)
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match=r"got input size \(1, 3\)$"):
        cv.check_batch_size((1, 3), allow_empty=False)
    cv.check_batch_size((0, 3, 2), allow_empty=True)  # torch's modules accept an empty batch
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        cv.check_batch_size((0, 3, 2), allow_empty=False)  # the NumPy reference does not
    cv.check_batch_size((2, 3), allow_empty=False)


@pytest.mark.parametrize("eps, training", [(0.0, True), (-1.0, True), (-1.0, False),
                                           (float("nan"), True), (float("nan"), False)])
def test_bad_eps_is_refused_with_torchs_wording(eps, training):
    with pytest.raises(ValueError) as ours:
        cv.check_eps(eps, training=training)
    if eps == eps:  # not NaN: torch refuses it too, in these words
        with pytest.raises(ValueError) as theirs:
            stats = (None, None) if training else (torch.zeros(3), torch.ones(3))
            TF.batch_norm(torch.randn(4, 3), *stats, training=training, eps=eps)
        assert str(ours.value) == str(theirs.value)
    else:
        assert "got nan" in str(ours.value)


def test_good_eps_passes():
    cv.check_eps(1e-5, training=True)
    cv.check_eps(0.0, training=False)


def test_momentum_range():
    for good in (0.0, 0.5, 1.0):
        cv.check_momentum(good)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
            cv.check_momentum(bad)


@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_running_statistics_rule_matches_torchs_over_steps(momentum):
    gen = torch.Generator().manual_seed(0)
    t_mean, t_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    n_mean, n_var = np.zeros(3), np.ones(3)
    for step in range(1, 5):
        x = torch.randn(6, 3, 2, generator=gen, dtype=torch.float64) * step + step
        factor = cv.average_factor(momentum, torch.tensor(step))
        TF.batch_norm(x, t_mean, t_var, training=True, momentum=factor)
        m = cv.values_per_channel(x.shape)
        xs = x.numpy()
        batch_var = xs.var(axis=(0, 2))  # biased, as the batch is normalized
        cv.update_running_stat(n_mean, xs.mean(axis=(0, 2)), factor)
        cv.update_running_stat(n_var, cv.unbiased_variance(batch_var, m), factor)
    np.testing.assert_allclose(n_mean, t_mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(n_var, t_var.numpy(), rtol=1e-13)


def test_average_factor_none_is_the_cumulative_average():
    assert cv.average_factor(0.3, torch.tensor(7)) == 0.3
    assert cv.average_factor(None, torch.tensor(4)) == 0.25


def test_unbiased_variance_is_bessels_correction():
    x = np.random.default_rng(0).normal(size=(9, 2))
    np.testing.assert_allclose(cv.unbiased_variance(x.var(axis=0), 9), x.var(axis=0, ddof=1),
                               rtol=1e-14)


# Each rule's message, and where it may be written: of the code that computes batch norm (the
# NumPy reference, the kernels' wrappers, the torch modules, the experiments), only in
# conventions.py. (minibn/checks quotes torch's wording back to learners; it enforces nothing.)
MESSAGES = ["Expected more than 1 value per channel", "eps must be positive",
            "eps must be non-negative", "momentum must be in [0, 1]"]
IMPLEMENTATION = ["minibn/conventions.py", "minibn/functional.py", "minibn/cuda", "minibn/nn",
                  "minibn/experiments"]


def _implementation_files():
    for entry in IMPLEMENTATION:
        path = ROOT / entry
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


@pytest.mark.parametrize("message", MESSAGES)
def test_each_message_has_one_home(message):
    homes = [str(p.relative_to(ROOT)) for p in _implementation_files() if message in p.read_text()]
    assert homes == ["minibn/conventions.py"], homes


def test_no_module_restates_the_channel_reshape_or_the_momentum_update():
    """Outside conventions.py, no copy of ``(1, C) + (1,) * (ndim - 2)`` nor of the in-place
    ``running *= 1 - momentum`` update in the modules that implement batch norm."""
    reshape = re.compile(r"\(1,\)\s*\*\s*\(\w+\.(ndim|dim\(\))\s*-\s*2\)")
    update = re.compile(r"\*=\s*1(\.0)?\s*-\s*momentum")
    files = [ROOT / "minibn" / name for name in
             ("functional.py", "cuda/api.py", "nn/function.py", "nn/functional.py",
              "nn/modules.py", "nn/inference.py")]
    for path in files:
        text = path.read_text()
        assert not reshape.search(text), path
        assert not update.search(text), path


def _bessel_restatements(path):
    """``... n ... / (n - 1)`` in the code of ``path`` (not its docstrings): Bessel's correction
    written out instead of called as ``unbiased_variance``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)):
            continue
        right = node.right
        if (isinstance(right, ast.BinOp) and isinstance(right.op, ast.Sub)
                and isinstance(right.right, ast.Constant) and right.right.value == 1):
            name = ast.unparse(right.left)
            if name in {ast.unparse(n) for n in ast.walk(node.left)}:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_bessels_correction_has_one_home():
    found = [hit for p in _implementation_files() for hit in _bessel_restatements(p)]
    assert found == ["minibn/conventions.py:" + str(_bessel_line())], found


def _bessel_line():
    return next(i for i, line in enumerate((ROOT / "minibn/conventions.py").read_text()
                                           .splitlines(), 1) if "return var * m / (m - 1)" in line)


_MOMENTUM = re.compile(r"\b\w*momentum\w*\b")


def _momentum_update_restatements(path, text=None):
    """The running-statistics rule written out instead of called as ``update_running_stat``:
    ``(1 - m) * r + m * s`` (either order, any momentum-named weight), ``r += m * (s - r)``, or
    ``r *= 1 - m``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            sides = [ast.unparse(node.left), ast.unparse(node.right)]
            hit = (all(_MOMENTUM.search(t) for t in sides)
                   and any(re.search(r"\b1(\.0)?\s*-\s*\w*momentum", t) for t in sides))
        elif isinstance(node, ast.AugAssign):
            value = ast.unparse(node.value)
            hit = ((isinstance(node.op, ast.Add) and _MOMENTUM.search(value) and " - " in value)
                   or (isinstance(node.op, ast.Mult) and re.fullmatch(r"1(\.0)? - \w*momentum", value)))
        else:
            continue
        if hit:
            found.append(f"{path}:{node.lineno}" if text is not None else f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("code", ["r = (1 - momentum) * r + momentum * s",
                                  "r = momentum * r + (1 - momentum) * s",
                                  "r += momentum * (s - r)",
                                  "r *= 1.0 - momentum"])
def test_the_momentum_restatement_finder_finds(code):
    assert _momentum_update_restatements("probe.py", code) == ["probe.py:1"]


def test_the_momentum_rule_has_one_home():
    """Every copy of torch's running update (the checks' known-bug variants and the explorer's
    simulation included) calls conventions.update_running_stat."""
    files = list(_implementation_files()) + sorted((ROOT / "minibn" / "checks").rglob("*.py")) \
        + sorted((ROOT / "minibn" / "widgets").rglob("*.py"))
    found = [hit for p in files for hit in _momentum_update_restatements(p)]
    line = next(i for i, text in enumerate((ROOT / "minibn/conventions.py").read_text().splitlines(), 1)
                if "running *= 1.0 - momentum" in text)
    assert found == [f"minibn/conventions.py:{line}"], found


# K5's running update is written in CUDA C, which cannot call conventions.py: it is kept, since
# the fused update (the last block of a channel finishes its statistics and updates the running
# ones in the same launch) is what the kernel step teaches, and pinned here to conventions' rule
# on the kernel's own batch statistics. The tolerance is a few float32 rounding steps: using the
# biased variance instead of m/(m - 1) times it moves the result by 1/(m - 1) (2e-4 at the
# largest m drawn), and a swapped momentum by far more.
@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 6), c=st.integers(1, 4), hw=st.integers(1, 40),
       momentum=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
       offset=st.floats(-50.0, 50.0), seed=st.integers(0, 2**16))
def test_k5_kernels_running_update_is_conventions_rule(n, c, hw, momentum, offset, seed):
    from minibn.cuda import progression

    assume(n * hw >= 2)
    rng = np.random.default_rng(seed)
    x = (rng.normal(offset, rng.uniform(0.1, 3.0), (n, c, hw))).astype(np.float32)
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    running_mean = rng.normal(0.0, 2.0, c).astype(np.float32)
    running_var = rng.uniform(0.1, 4.0, c).astype(np.float32)
    got_mean, got_var = running_mean.copy(), running_var.copy()
    _, mean, var, _ = progression.forward("K5", x, gamma, beta, block=32, splits=2,
                                          running_mean=got_mean, running_var=got_var,
                                          momentum=momentum)
    m = cv.values_per_channel(x.shape)
    want_mean = cv.update_running_stat(running_mean.astype(np.float64), mean, momentum)
    want_var = cv.update_running_stat(running_var.astype(np.float64),
                                      cv.unbiased_variance(var.astype(np.float64), m), momentum)
    np.testing.assert_allclose(got_mean, want_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_var, want_var, rtol=1e-6)

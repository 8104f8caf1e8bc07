"""minibn.checks.inference accepts correct implementations and rejects known bugs with the
expected hint."""
from __future__ import annotations

import numpy as np
import pytest

from minibn import functional as ref
from minibn.checks import inference as chk
from minibn.grading import conventions


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _view(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def population_stats(batches):
    """Correct: merge per-batch (count, mean, M2) pairwise (Chan et al.)."""
    n, mean, m2 = 0, 0.0, 0.0
    for b in batches:
        m = b.size // b.shape[1]
        mu, var = b.mean(axis=_axes(b)), b.var(axis=_axes(b))
        delta = mu - mean
        mean = mean + delta * m / (n + m)
        m2 = m2 + var * m + delta**2 * n * m / (n + m)
        n += m
    return mean, m2 / (n - 1)


def population_stats_concat(batches):
    """Also correct: concatenate everything (memory-hungry, but the same numbers)."""
    flat = np.concatenate([np.moveaxis(b, 1, -1).reshape(-1, b.shape[1]) for b in batches])
    return flat.mean(0), flat.var(0, ddof=1)


def fold_into_linear(W, b, mean, var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(var + eps)
    return W * scale[:, None], (b - mean) * scale + beta


def test_correct_implementations_pass():
    chk.check_update_running_stats(ref.update_running_stats)
    chk.check_update_running_stats_randomized(ref.update_running_stats, seed=1)
    chk.check_batchnorm_inference(ref.batchnorm_inference)
    chk.check_batchnorm_inference_randomized(ref.batchnorm_inference, seed=2)
    for fn in (population_stats, population_stats_concat):
        chk.check_population_stats(fn)
        chk.check_population_stats_randomized(fn, seed=3)
    chk.check_fold_into_linear(fold_into_linear)
    chk.check_fold_into_linear_randomized(fold_into_linear, seed=4)


@pytest.mark.parametrize("seed", range(5))
def test_randomized_checks_pass_the_reference_for_any_seed(seed):
    assert chk.check_update_running_stats_randomized(ref.update_running_stats, seed=seed) is None
    assert chk.check_batchnorm_inference_randomized(ref.batchnorm_inference, seed=seed) is None
    assert chk.check_population_stats_randomized(population_stats, seed=seed) is None
    assert chk.check_fold_into_linear_randomized(fold_into_linear, seed=seed) is None


def test_randomized_seed_comes_from_the_grading_secret(monkeypatch):
    def reversed_momentum(rm, rv, x, momentum=0.1):
        return ref.update_running_stats(rm, rv, x, 1 - momentum)

    monkeypatch.setenv("MINIBN_GRADING_SECRET", "s3cret")
    monkeypatch.setenv("MINIBN_STUDENT_ID", "alice")
    messages = []
    for _ in range(2):
        with pytest.raises(AssertionError) as err:
            chk.check_update_running_stats_randomized(reversed_momentum)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "seed" in messages[0]


# --- update_running_stats bugs ---------------------------------------------------------------

def running_reversed(rm, rv, x, momentum=0.1):
    return ref.update_running_stats(rm, rv, x, momentum=1 - momentum)


def running_biased(rm, rv, x, momentum=0.1):
    axes = _axes(x)
    rm *= 1 - momentum
    rm += momentum * x.mean(axis=axes)
    rv *= 1 - momentum
    rv += momentum * x.var(axis=axes)
    return rm, rv


def running_std(rm, rv, x, momentum=0.1):
    axes = _axes(x)
    rm *= 1 - momentum
    rm += momentum * x.mean(axis=axes)
    rv *= 1 - momentum
    rv += momentum * x.std(axis=axes, ddof=1)
    return rm, rv


def running_not_in_place(rm, rv, x, momentum=0.1):
    axes = _axes(x)
    return ((1 - momentum) * rm + momentum * x.mean(axis=axes),
            (1 - momentum) * rv + momentum * x.var(axis=axes, ddof=1))


def running_axis0_only(rm, rv, x, momentum=0.1):
    rm *= 1 - momentum
    rm += momentum * x.mean(axis=0).reshape(x.shape[1], -1).mean(1)
    rv *= 1 - momentum
    rv += momentum * x.var(axis=0, ddof=1).reshape(x.shape[1], -1).mean(1)
    return rm, rv


RUNNING_BUGS = {
    running_reversed: "momentum is reversed",
    running_biased: "unbiased m / (m - 1)",
    running_std: "averaged the standard deviation",
    running_not_in_place: "in place",
    running_axis0_only: "running_",
}


@pytest.mark.parametrize("bug", list(RUNNING_BUGS), ids=lambda f: f.__name__)
def test_update_running_stats_bugs_are_caught(bug):
    with pytest.raises(AssertionError) as err:
        chk.check_update_running_stats(bug)
    assert RUNNING_BUGS[bug] in str(err.value)
    with pytest.raises(AssertionError):
        chk.check_update_running_stats_randomized(bug, seed=0)


# --- batchnorm_inference bugs ----------------------------------------------------------------

def inference_batch_stats(x, mean, var, gamma, beta, eps=1e-5):
    return ref.batchnorm_forward(x, gamma, beta, eps)[0]


def inference_eps_outside(x, mean, var, gamma, beta, eps=1e-5):
    return _view(gamma, x) * (x - _view(mean, x)) / (np.sqrt(_view(var, x)) + eps) + _view(beta, x)


def inference_no_affine(x, mean, var, gamma, beta, eps=1e-5):
    return (x - _view(mean, x)) / np.sqrt(_view(var, x) + eps)


def inference_divide_by_var(x, mean, var, gamma, beta, eps=1e-5):
    return _view(gamma, x) * (x - _view(mean, x)) / (_view(var, x) + eps) + _view(beta, x)


def inference_upcasts(x, mean, var, gamma, beta, eps=1e-5):
    return ref.batchnorm_inference(x.astype(np.float64), mean, var, gamma, beta, eps)


def inference_in_place(x, mean, var, gamma, beta, eps=1e-5):
    x -= _view(mean, x)
    return ref.batchnorm_inference(x, np.zeros_like(mean), var, gamma, beta, eps)


INFERENCE_BUGS = {
    inference_batch_stats: "this batch's own mean and variance",
    inference_eps_outside: "eps goes inside the square root",
    inference_no_affine: "missing the scale gamma",
    inference_divide_by_var: "not var",
    inference_upcasts: "dtype",
    inference_in_place: "in place",
}


@pytest.mark.parametrize("bug", list(INFERENCE_BUGS), ids=lambda f: f.__name__)
def test_batchnorm_inference_bugs_are_caught(bug):
    with pytest.raises(AssertionError) as err:
        chk.check_batchnorm_inference(bug)
    assert INFERENCE_BUGS[bug] in str(err.value)


def test_inference_with_batch_stats_fails_on_a_single_example():
    """A single example has no batch variance: the N = 1 case must not crash the check."""
    def safe_batch_stats(x, mean, var, gamma, beta, eps=1e-5):
        axes = _axes(x)
        mu, v = x.mean(axis=axes), x.var(axis=axes)
        return ref.batchnorm_inference(x, mu, v, gamma, beta, eps)

    with pytest.raises(AssertionError, match="own mean and variance"):
        chk.check_batchnorm_inference(safe_batch_stats)


# --- population_stats bugs -------------------------------------------------------------------

def pop_mean_of_unbiased(batches):
    return (np.mean([b.mean(axis=_axes(b)) for b in batches], axis=0),
            np.mean([b.var(axis=_axes(b), ddof=1) for b in batches], axis=0))


def pop_mean_of_biased(batches):
    mean, _ = population_stats(batches)
    return mean, np.mean([b.var(axis=_axes(b)) for b in batches], axis=0)


def pop_biased_total(batches):
    mean, var = population_stats(batches)
    m = sum(b.size // b.shape[1] for b in batches)
    return mean, var * (m - 1) / m


def pop_unweighted_means(batches):
    _, var = population_stats(batches)
    return np.mean([b.mean(axis=_axes(b)) for b in batches], axis=0), var


POPULATION_BUGS = {
    pop_mean_of_unbiased: "spread of the batch means",
    pop_mean_of_biased: "biased per-batch variances",
    pop_biased_total: "M / (M - 1)",
    pop_unweighted_means: "weight each batch mean",
}


@pytest.mark.parametrize("bug", list(POPULATION_BUGS), ids=lambda f: f.__name__)
def test_population_stats_bugs_are_caught(bug):
    with pytest.raises(AssertionError) as err:
        chk.check_population_stats(bug)
    assert POPULATION_BUGS[bug] in str(err.value)


# --- fold_into_linear bugs -------------------------------------------------------------------

def fold_columns(W, b, mean, var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(var + eps)
    if W.shape[0] != W.shape[1]:
        return fold_into_linear(W, b, mean, var, gamma, beta, eps)  # bug shows on square W only
    return W * scale[None, :], (b - mean) * scale + beta


def fold_bias_unscaled(W, b, mean, var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(var + eps)
    return W * scale[:, None], b - mean * scale + beta


def fold_ignores_bias(W, b, mean, var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(var + eps)
    return W * scale[:, None], -mean * scale + beta


def fold_no_beta(W, b, mean, var, gamma, beta, eps=1e-5):
    scale = gamma / np.sqrt(var + eps)
    return W * scale[:, None], (b - mean) * scale


def fold_eps_outside(W, b, mean, var, gamma, beta, eps=1e-5):
    scale = gamma / (np.sqrt(var) + eps)
    return W * scale[:, None], (b - mean) * scale + beta


FOLD_BUGS = {
    fold_columns: "scaled per column",
    fold_bias_unscaled: "scaled as well",
    fold_ignores_bias: "ignores the layer's own bias",
    fold_no_beta: "missing the shift beta",
    fold_eps_outside: "inside the square root",
}


@pytest.mark.parametrize("bug", list(FOLD_BUGS), ids=lambda f: f.__name__)
def test_fold_into_linear_bugs_are_caught(bug):
    with pytest.raises(AssertionError) as err:
        chk.check_fold_into_linear(bug)
    assert FOLD_BUGS[bug] in str(err.value)


def test_checks_return_none_and_write_no_stderr(capsys):
    def noisy(x, mean, var, gamma, beta, eps=1e-5):
        import sys
        print("debug", file=sys.stderr)
        return ref.batchnorm_inference(x, mean, var, gamma, beta, eps)

    assert chk.check_batchnorm_inference(noisy) is None
    assert capsys.readouterr().err == ""


# --- the lesson notebook (tests/test_notebooks.py runs it; here: what is specific to it) ---

LESSON = "solutions/03-inference/03-inference.ipynb"
GRADED = {"update_running_stats", "batchnorm_inference", "population_stats", "fold_into_linear"}


def _lesson():
    import pathlib

    import nbformat

    return nbformat.read(pathlib.Path(__file__).parents[2] / LESSON, as_version=4)


def test_lesson_follows_the_notebook_conventions():
    nb = _lesson()
    assert conventions.problems(nb) == []  # the rules every lesson follows
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "FAST = setup(torch=True)" in code[0].source
    graded = {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
              if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}
    assert set(graded) == GRADED
    for i, cell in enumerate(nb.cells):
        if cell.id.endswith("-solution"):
            test = nb.cells[i + 1]
            name = cell.metadata["nbgrader"]["grade_id"]
            assert test.metadata["nbgrader"]["grade_id"] == f"test_{name}"
            assert test.metadata["nbgrader"]["locked"] and test.metadata["nbgrader"]["points"] > 0
            assert "### BEGIN HIDDEN TESTS" in test.source and f"({name})" in test.source
            assert "### BEGIN SOLUTION" in cell.source
    imports = "\n".join(c.source for c in code)
    for name in GRADED:  # never import the reference of what the learner writes
        assert f"import {name}" not in imports and f"functional.{name}" not in imports


"""Deliberately buggy learner implementations, each paired with the hint a check must give.

Every entry is ``name -> (function, expected substring of the AssertionError message)``. The
functions are written the way a learner would write them (plain NumPy, channel axis 1), each
with exactly one of the mistakes the course's checks claim to diagnose.
"""
from __future__ import annotations

import functools
import hashlib
import sys
import warnings

import numpy as np

from minibn.functional import BatchNormCache



def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _vec(v, x):
    return np.asarray(v).reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))


# ---------------------------------------------------------------- lesson 01: forward and stats

def forward(x, gamma, beta, eps=1e-5, *, axes=None, ddof=0, eps_mode="inside", affine="ok",
            one_pass=False, refuse_m1=True, cache_type=BatchNormCache):
    """A learner's forward with one knob turned: the correct answer when every knob is default."""
    if refuse_m1 and x.size // x.shape[1] < 2:
        raise ValueError("Expected more than 1 value per channel when training")
    axes = _axes(x) if axes is None else axes
    mu = x.mean(axis=axes, keepdims=True)
    if one_pass:
        var = (x * x).mean(axis=axes, keepdims=True) - mu * mu
    else:
        var = x.var(axis=axes, ddof=ddof, keepdims=True)
    denom = {
        "inside": np.sqrt(var + eps),
        "outside": np.sqrt(var) + eps,
        "missing": np.sqrt(var),
        "variance": var + eps,
    }[eps_mode]
    x_hat = (x - mu) / denom
    g, b = _vec(gamma, x), _vec(beta, x)
    out = {"ok": g * x_hat + b, "swapped": b * x_hat + g, "missing": x_hat}[affine]
    c = x.shape[1]
    return out, cache_type(x, x_hat, _per_channel(mu, c), _per_channel(var, c),
                           _per_channel(1 / denom, c), np.asarray(gamma), eps)


def _per_channel(a, c):
    """A (C,) vector from keepdims statistics (for the buggy axes, whatever comes first)."""
    a = np.asarray(a).reshape(-1)
    return a[:c] if a.size >= c else np.resize(a, c)


def correct_forward(x, gamma, beta, eps=1e-5):
    return forward(x, gamma, beta, eps)


def _knob(**knobs):
    return functools.partial(forward, **knobs)


def forward_axis0(x, gamma, beta, eps=1e-5):
    return forward(x, gamma, beta, eps, axes=(0,))


def forward_per_sample(x, gamma, beta, eps=1e-5):
    return forward(x, gamma, beta, eps, axes=tuple(range(1, x.ndim)))


def forward_whole_tensor(x, gamma, beta, eps=1e-5):
    return forward(x, gamma, beta, eps, axes=tuple(range(x.ndim)))


def forward_mutates_x(x, gamma, beta, eps=1e-5):
    x -= x.mean(axis=_axes(x), keepdims=True)  # the caller's x changes
    x /= np.sqrt((x * x).mean(axis=_axes(x), keepdims=True) + eps)
    return _vec(gamma, x) * x + _vec(beta, x), None


def forward_upcasts(x, gamma, beta, eps=1e-5):
    out, cache = forward(x, gamma, beta, eps)
    return out.astype(np.float64), cache


def forward_returns_list(x, gamma, beta, eps=1e-5):
    out, cache = forward(x, gamma, beta, eps)
    return out.tolist(), cache


class Sneaky(np.ndarray):
    """An ndarray subclass; its comparisons could be overridden to always agree."""

    def __eq__(self, other):
        return np.ones(self.shape, dtype=bool)


def forward_returns_subclass(x, gamma, beta, eps=1e-5):
    out, cache = forward(x, gamma, beta, eps)
    return out.view(Sneaky), cache


class AlwaysEqual:
    """Not an array at all: equal to anything, close to anything."""

    shape = dtype = None

    def __eq__(self, other):
        return True

    def __array__(self, dtype=None, copy=None):
        return np.zeros(0)


def forward_returns_always_equal(x, gamma, beta, eps=1e-5):
    return AlwaysEqual(), None


def forward_returns_only_out(x, gamma, beta, eps=1e-5):
    return forward(x, gamma, beta, eps)[0]


def forward_warns_and_is_right(x, gamma, beta, eps=1e-5):
    """Correct, but noisy: warns, writes to stderr and divides 0/0 on the way."""
    warnings.warn("learner's debugging warning", UserWarning)
    print("debug output on stderr", file=sys.stderr)
    np.zeros(1) / np.zeros(1)  # RuntimeWarning: invalid value
    return forward(x, gamma, beta, eps)


def forward_warns_and_is_wrong(x, gamma, beta, eps=1e-5):
    np.zeros(1) / np.zeros(1)
    return forward(x, gamma, beta, eps, ddof=1)


def _key(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def hard_coded(run_public_check, reference, wrong):
    """A learner function that replays what ``reference`` answered during the public check.

    It runs ``run_public_check`` once on a recorder wrapped around ``reference`` and from then on
    answers every recorded input from its table, and anything else with ``wrong(*args)``: the
    cheat that passes visible tests without computing anything.
    """
    table = {}

    def recorder(*args):
        try:
            result = reference(*args)
        except Exception as err:  # an input the reference refuses is replayed as a refusal
            table[_key(*_arrays(args))] = err
            raise
        table[_key(*_arrays(args))] = _copy(result)
        return result

    run_public_check(recorder)

    def replay(*args):
        key = _key(*_arrays(args))
        if key in table and isinstance(table[key], Exception):
            raise table[key]
        return _copy(table[key]) if key in table else wrong(*args)

    return replay


def _arrays(args):
    out = []
    for a in args:
        if isinstance(a, np.ndarray):
            out.append(a)
        elif isinstance(a, tuple):  # a BatchNormCache
            out.extend(v for v in a if isinstance(v, np.ndarray))
        else:
            out.append(np.asarray(float(a)))
    return out


def _copy(result):
    if isinstance(result, tuple) and not hasattr(result, "_fields"):
        return tuple(_copy(r) for r in result)
    return result.copy() if isinstance(result, np.ndarray) else result


FORWARD_BUGS = {
    "ddof=1": (_knob(ddof=1), "divided by m - 1"),
    "eps outside sqrt": (_knob(eps_mode="outside"), "eps belongs inside the square root"),
    "eps missing": (_knob(eps_mode="missing"), "eps is missing"),
    "divide by var": (_knob(eps_mode="variance"), "you divided by the variance"),
    "axis 0 only": (forward_axis0, "over axis 0 only"),
    "per sample": (forward_per_sample, "per sample"),
    "whole tensor": (forward_whole_tensor, "whole tensor"),
    "gamma/beta swapped": (_knob(affine="swapped"), "gamma and beta are swapped"),
    "affine missing": (_knob(affine="missing"), "scale and shift are missing"),
    "one-pass variance": (_knob(one_pass=True), "E[x^2] - E[x]^2"),
    "mutates x": (forward_mutates_x, "input mutated"),
    "float32 upcast": (forward_upcasts, "has dtype float64, expected float32"),
    "returns list": (forward_returns_list, "must be a NumPy ndarray, got list"),
    "ndarray subclass": (forward_returns_subclass, "must be a NumPy ndarray, got Sneaky"),
    "always-equal object": (forward_returns_always_equal, "must be a NumPy ndarray, got AlwaysEqual"),
    "returns out only": (forward_returns_only_out, "must return a tuple (out, cache)"),
    "warns and is wrong": (forward_warns_and_is_wrong, "Your code warned: RuntimeWarning"),
    "no ValueError at m = 1": (_knob(refuse_m1=False), "returned instead of raising ValueError"),
    "cache is a plain tuple": (_knob(cache_type=lambda *fields: tuple(fields)),
                               "cache must be a BatchNormCache"),
    "cache holds the std": (lambda x, gamma, beta, eps=1e-5: _std_cache(x, gamma, beta, eps),
                            "cache.inv_std is wrong"),
}


def _std_cache(x, gamma, beta, eps):
    out, cache = forward(x, gamma, beta, eps)
    return out, cache._replace(inv_std=1 / cache.inv_std)


def correct_stats(x):
    return x.mean(axis=_axes(x)), x.var(axis=_axes(x))


def _stats_bug(mean_axes=None, var_axes=None, ddof=0, dtype=None):
    def channel_stats(x):
        ma = _axes(x) if mean_axes is None else mean_axes(x)
        va = _axes(x) if var_axes is None else var_axes(x)
        mean, var = x.mean(axis=ma), x.var(axis=va, ddof=ddof)
        return (mean, var) if dtype is None else (mean.astype(dtype), var.astype(dtype))

    return channel_stats


STATS_BUGS = {
    "ddof=1": (_stats_bug(ddof=1), "unbiased variance"),
    "mean over axis 0 only": (_stats_bug(mean_axes=lambda x: (0,)),
                              "reduce over every axis except the channel axis 1"),
    "var over the channels": (_stats_bug(var_axes=lambda x: tuple(range(1, x.ndim))),
                              "reduce over every axis except the channel axis 1"),
    "float64 stats for float32 x": (_stats_bug(dtype=np.float64), "expected float32"),
    "one-pass variance": (lambda x: (x.mean(axis=_axes(x)),
                                     (x * x).mean(axis=_axes(x)) - x.mean(axis=_axes(x)) ** 2),
                          "E[x^2] - E[x]^2 cancels catastrophically"),
    "returns mean only": (lambda x: x.mean(axis=_axes(x)), "must return a tuple (mean, var)"),
}


# ---------------------------------------------------------------- lesson 02: backward

def backward(dout, cache, *, mean_path=True, var_path=True, gamma_in_dx=True, swap=False,
             dgamma_from_x=False, param_axes=None, dx_axes=None):
    """A learner's closed-form backward with one knob turned (correct with every default)."""
    x_hat, gamma, inv_std = cache.x_hat, cache.gamma, cache.inv_std
    axes = _axes(dout)
    dbeta = dout.sum(axis=axes if param_axes is None else param_axes)
    dgamma = (dout * (cache.x if dgamma_from_x else x_hat)).sum(
        axis=axes if param_axes is None else param_axes)
    g = _vec(gamma, dout) if gamma_in_dx else 1.0
    dx_hat = dout * g
    ax = axes if dx_axes is None else dx_axes
    dx = dx_hat.copy()
    if mean_path:
        dx -= dx_hat.mean(axis=ax, keepdims=True)
    if var_path:
        dx -= x_hat * (dx_hat * x_hat).mean(axis=ax, keepdims=True)
    dx *= _vec(inv_std, dout)
    return (dx, dbeta, dgamma) if swap else (dx, dgamma, dbeta)


def correct_backward(dout, cache):
    return backward(dout, cache)


def _bknob(**knobs):
    return functools.partial(backward, **knobs)


def backward_mutates_dout(dout, cache):
    dx, dgamma, dbeta = backward(dout.copy(), cache)
    dout *= 0.5  # "scratch space": the caller's dout changes
    return dx, dgamma, dbeta


def backward_mutates_cache(dout, cache):
    x = cache.x
    x -= cache.mean.reshape((1, -1) + (1,) * (x.ndim - 2))  # reuses x for x - mu
    return backward(dout, cache)


def backward_param_axis0(dout, cache):
    return backward(dout, cache, param_axes=(0,))


def backward_dx_axis0(dout, cache):
    return backward(dout, cache, dx_axes=(0,))


def backward_returns_list(dout, cache):
    dx, dgamma, dbeta = backward(dout, cache)
    return dx.tolist(), dgamma, dbeta


def backward_upcasts(dout, cache):
    dx, dgamma, dbeta = backward(dout, cache)
    return dx.astype(np.float64), dgamma, dbeta


BACKWARD_BUGS = {
    "missing mean path": (_bknob(mean_path=False), "missing the path through the mean"),
    "missing variance path": (_bknob(var_path=False), "missing the path through the variance"),
    "missing both paths": (_bknob(mean_path=False, var_path=False),
                           "ignores the paths through the batch mean and variance"),
    "gamma missing in dx": (_bknob(gamma_in_dx=False), "missing the factor gamma"),
    "dgamma/dbeta swapped": (_bknob(swap=True), "dgamma and dbeta are swapped"),
    "dgamma from x": (_bknob(dgamma_from_x=True), "dgamma uses x"),
    "dgamma/dbeta over axis 0 only": (backward_param_axis0,
                                      "reduce over every axis except the channel axis 1"),
    "dx means over axis 0 only": (backward_dx_axis0, "means over the wrong axes"),
    "mutates dout": (backward_mutates_dout, "input mutated"),
    "mutates cache.x": (backward_mutates_cache, "modified its input cache.x in place"),
    "returns list": (backward_returns_list, "must be a NumPy ndarray, got list"),
    "float32 upcast": (backward_upcasts, "has dtype float64, expected float32"),
}


def correct_frozen(dout, cache):
    axes = _axes(dout)
    dx = dout * _vec(cache.gamma * cache.inv_std, dout)
    return dx, (dout * cache.x_hat).sum(axis=axes), dout.sum(axis=axes)


FROZEN_BUGS = {
    "full gradient instead": (correct_backward, "this is the full gradient"),
    "gamma missing": (lambda dout, cache: (dout * _vec(cache.inv_std, dout),
                                           *correct_frozen(dout, cache)[1:]),
                      "missing the factor gamma"),
}

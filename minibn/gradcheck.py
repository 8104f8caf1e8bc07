"""Numerical gradients by central differences, and the relative error used to compare them.

Always check in float64 with a random upstream gradient ``dout``: in float32 the rounding error
of a central difference (~1e-7 / h) swamps the truncation error, and a constant ``dout`` makes
the batch-norm ``dx`` exactly zero, which hides most bugs.
"""
from __future__ import annotations

import numpy as np

__all__ = ["numerical_gradient", "numerical_gradient_array", "rel_error"]


def rel_error(x, y):
    """Largest elementwise relative error ``|x - y| / max(1e-8, |x| + |y|)``.

    Returns a Python float. For a correct float64 batch-norm gradient expect about 1e-13 to 1e-8.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"rel_error: shapes differ, {x.shape} vs {y.shape}")
    if x.size == 0:
        return 0.0
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def _require_float64(x, name):
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        dtype = getattr(x, "dtype", type(x).__name__)
        raise TypeError(
            f"{name} must be a float64 NumPy array for a numerical gradient check, got {dtype}: "
            "central differences in float32 are dominated by rounding error"
        )


def numerical_gradient(f, x, h=1e-5):
    """Central-difference gradient of a scalar function ``f`` at ``x`` (float64, perturbed in place).

    Args:
        f: callable taking no arguments and returning a scalar that depends on ``x``.
        x: float64 array; each entry is nudged by ±h and restored.
        h: step size.

    Returns:
        grad, same shape as ``x``.
    """
    _require_float64(x, "x")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so that it can be perturbed in place")
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def numerical_gradient_array(f, x, dout, h=1e-5):
    """Central-difference vector-Jacobian product ``sum(dout * d f(x) / dx)``.

    Args:
        f: callable taking no arguments and returning an array that depends on ``x``.
        x: float64 array; each entry is nudged by ±h and restored.
        dout: float64 array with the shape of ``f()``, the upstream gradient.
        h: step size.

    Returns:
        grad, same shape as ``x``.
    """
    _require_float64(dout, "dout")
    return numerical_gradient(lambda: np.sum(np.asarray(f(), dtype=np.float64) * dout), x, h)

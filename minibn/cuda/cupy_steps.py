"""Steps L0 and L1 of the progression: CuPy's own machinery, before any hand-written CUDA C.

These need a GPU: CuPy's array ops and ``ElementwiseKernel``/``ReductionKernel`` generate and
compile their own kernels and run them on the device, and there is no CPU executor for that
generated code. On a machine without a GPU they raise ``RuntimeError``; the CUDA C steps K0-K6
(``minibn.cuda.progression``) are the ones that also run on the CPU.
"""
from __future__ import annotations

from functools import lru_cache

from minibn.cuda.runtime import gpu_available, is_cupy

__all__ = ["forward", "stats"]


def _require_gpu(step, x):
    if not is_cupy(x) or not gpu_available():
        raise RuntimeError(
            f"step {step} uses CuPy's generated kernels, which run only on a GPU (pass a CuPy array "
            "on a machine with one); on the CPU, run the CUDA C steps K0-K6 through the executor"
        )


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bshape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


@lru_cache(maxsize=None)
def _kernels():
    import cupy

    # map: x (or its squared deviation), reduce: a + b, post-map: identity; CuPy's generated
    # kernel handles the strided NCHW reduction over axes (0, 2, 3).
    total = cupy.ReductionKernel("T x", "T y", "x", "a + b", "y = a", "0", "bn_sum")
    squared_dev = cupy.ReductionKernel(
        "T x, T mu", "T y", "(x - mu) * (x - mu)", "a + b", "y = a", "0", "bn_sq_dev")
    normalize = cupy.ElementwiseKernel(
        "T x, T mean, T invstd, T gamma, T beta", "T y",
        "y = (x - mean) * invstd * gamma + beta", "bn_normalize")
    return total, squared_dev, normalize


def stats(step, x):
    """``(mean, var)`` per channel by L0 (array ops) or L1 (ReductionKernel, two passes)."""
    _require_gpu(step, x)
    m = x.size // x.shape[1]
    if step == "L0":
        return x.mean(axis=_axes(x)), x.var(axis=_axes(x))
    total, squared_dev, _ = _kernels()
    mean = total(x, axis=_axes(x)) / m
    var = squared_dev(x, mean.reshape(_bshape(x)), axis=_axes(x)) / m
    return mean, var


def forward(step, x, gamma, beta, eps=1e-5):
    """``(out, mean, var, invstd)`` by L0 or L1."""
    import cupy

    mean, var = stats(step, x)
    invstd = 1.0 / cupy.sqrt(var + x.dtype.type(eps))
    s = _bshape(x)
    if step == "L0":
        out = (x - mean.reshape(s)) * invstd.reshape(s) * gamma.reshape(s) + beta.reshape(s)
    else:
        out = _kernels()[2](x, mean.reshape(s), invstd.reshape(s), gamma.reshape(s), beta.reshape(s))
    return out, mean, var, invstd

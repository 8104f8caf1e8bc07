"""The kernel progression of lesson 06, each step kept and launchable on either runtime.

Statistics steps return the per-channel batch ``(mean, var)`` (biased variance) of an NCHW
float32 tensor; ``forward(step, ...)`` adds the normalize. The CUDA C steps K0-K6 run on a GPU
(CuPy arrays) or through the CPU executor (NumPy arrays); L0 and L1 are CuPy's own machinery
(array ops, ``ElementwiseKernel``/``ReductionKernel``), which needs a GPU
(``minibn.cuda.cupy_steps``).

| step | file                        | what it teaches                                        |
|------|-----------------------------|--------------------------------------------------------|
| L0   | cupy_steps.py               | CuPy array ops: the passes and temporaries to beat     |
| L1   | cupy_steps.py               | ElementwiseKernel normalize + ReductionKernel sums     |
| K0   | k0_thread_per_channel.cu    | indexing; why C threads cannot fill a GPU              |
| K1   | k1_block_tree.cu            | block per channel, shared-memory tree, __syncthreads   |
| K2   | k2_welford_warp.cu          | Welford + warp-shuffle Chan merge (stable variance)    |
| K3   | k3_grid_split.cu            | grid split over N*H*W for small C: partials + finalize |
| K4   | k4_vectorized.cu            | float4 loads, four accumulators, reciprocal            |
| K5   | k5_forward.cu               | fused forward: last-block ticket, running stats        |
| K6   | k6_backward.cu              | backward: one (sum dy, sum dy*x_hat) pass + dx         |
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from minibn.cuda.runtime import runtime_for

__all__ = [
    "STEPS",
    "Step",
    "backward",
    "default_splits",
    "dims",
    "forward",
    "stats",
    "variance_error",
]

SM_COUNT = 132  # H100 SXM: the grid split aims at a few blocks per SM


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    file: str  # kernels/<file>.cu, or "" for the CuPy-only steps
    kernels: tuple


STEPS = (
    Step("L0", "CuPy array ops", "", ()),
    Step("L1", "ElementwiseKernel + ReductionKernel", "", ()),
    Step("K0", "one thread per channel", "k0_thread_per_channel", ("bn_stats_k0",)),
    Step("K1", "block per channel, shared-memory tree (sum x, sum x^2)", "k1_block_tree", ("bn_stats_k1",)),
    Step("K2", "Welford + warp-shuffle Chan merge", "k2_welford_warp", ("bn_stats_k2",)),
    Step("K3", "grid split: partials + finalize", "k3_grid_split",
         ("bn_stats_k3_partial", "bn_stats_k3_finalize")),
    Step("K4", "float4 loads, 4 accumulators per thread", "k4_vectorized",
         ("bn_stats_k4_partial", "bn_stats_k4_finalize")),
    Step("K5", "fused forward: last-block ticket + running stats", "k5_forward",
         ("bn_fwd_stats", "bn_fwd_apply")),
    Step("K6", "backward: one reduce pass + elementwise dx", "k6_backward",
         ("bn_bwd_reduce", "bn_bwd_elemt")),
)
_BY_KEY = {s.key: s for s in STEPS}


def dims(x):
    """``(N, C, HW)`` of an ``(N, C, *spatial)`` tensor (HW = 1 for ``(N, C)``)."""
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C) or (N, C, *spatial), got shape {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1]), int(prod(x.shape[2:]))


def default_splits(C, m, block):
    """Blocks per channel for the grid split: enough for ~4 blocks per SM, but never so many
    that a block gets fewer than 4 elements per thread."""
    wanted = -(-4 * SM_COUNT // C)
    return max(1, min(wanted, m // (4 * block)))


def _check_block(block, power_of_two=False):
    if block % 32 or not 32 <= block <= 1024:
        raise ValueError(f"block must be a multiple of 32 between 32 and 1024, got {block}")
    if power_of_two and block & (block - 1):
        raise ValueError(f"K1's tree needs a power-of-two block, got {block}")


def _rows_grid(HW, N, C, block, per_thread=1):
    return (max(1, min(-(-HW // (block * per_thread)), 65535)), min(N * C, 65535))


def stats(step, x, *, block=256, splits=None):
    """Per-channel ``(mean, var)`` of float32 NCHW ``x`` computed by kernel step ``step``."""
    if step in ("L0", "L1"):
        from minibn.cuda import cupy_steps

        return cupy_steps.stats(step, x)
    if step not in _BY_KEY or step == "K6":
        raise ValueError(f"step must be one of L0, L1, K0-K5 for statistics, got {step!r}")
    rt = runtime_for(x)
    xp = rt.xp
    N, C, HW = dims(x)
    i32 = np.int32
    mean = xp.empty(C, xp.float32)
    var = xp.empty(C, xp.float32)
    f = _BY_KEY[step].file
    if step == "K0":
        rt.kernel(f, "bn_stats_k0")((-(-C // block),), (block,), (x, mean, var, i32(N), i32(C), i32(HW)))
    elif step == "K1":
        _check_block(block, power_of_two=True)
        rt.kernel(f, "bn_stats_k1")((C,), (block,), (x, mean, var, i32(N), i32(C), i32(HW)),
                                    shared_mem=2 * block * 4)
    elif step == "K2":
        _check_block(block)
        rt.kernel(f, "bn_stats_k2")((C,), (block,), (x, mean, var, i32(N), i32(C), i32(HW)))
    elif step in ("K3", "K4"):
        _check_block(block)
        S = splits or default_splits(C, N * HW, block)
        partial = xp.empty(C * S * 3, xp.float32)
        name = "bn_stats_k3" if step == "K3" else "bn_stats_k4"
        rt.kernel(f, name + "_partial")((S, C), (block,), (x, partial, i32(N), i32(C), i32(HW)))
        rt.kernel(f, name + "_finalize")((-(-C // 128),), (128,), (partial, mean, var, i32(C), i32(S)))
    else:  # K5
        mean, var, _ = _fwd_stats(rt, x, 1e-5, None, None, 0.1, block, splits)
    return mean, var


def _fwd_stats(rt, x, eps, running_mean, running_var, momentum, block, splits):
    xp = rt.xp
    N, C, HW = dims(x)
    _check_block(block)
    S = splits or default_splits(C, N * HW, block)
    mean, var, invstd = (xp.empty(C, xp.float32) for _ in range(3))
    partial = xp.empty(C * S * 3, xp.float32)
    counter = xp.zeros(C, xp.uint32)
    update = running_mean is not None
    rm = running_mean if update else xp.zeros(1, xp.float32)
    rv = running_var if update else xp.zeros(1, xp.float32)
    rt.kernel("k5_forward", "bn_fwd_stats")(
        (S, C), (block,),
        (x, partial, counter, mean, var, invstd, rm, rv, np.int32(N), np.int32(C), np.int32(HW),
         np.float32(eps), np.float32(momentum), np.int32(update)),
    )
    return mean, var, invstd


def forward(step, x, gamma, beta, eps=1e-5, *, block=256, splits=None, running_mean=None,
            running_var=None, momentum=0.1):
    """Training forward by step ``step``: returns ``(out, mean, var, invstd)``.

    K0-K4 compute the statistics and normalize with ``apply.cu``; K5 is the fused forward (and
    the only step that updates ``running_mean``/``running_var``, in place, when given).
    """
    if step in ("L0", "L1"):
        from minibn.cuda import cupy_steps

        return cupy_steps.forward(step, x, gamma, beta, eps)
    rt = runtime_for(x)
    xp = rt.xp
    N, C, HW = dims(x)
    out = xp.empty_like(x)
    if step == "K5":
        mean, var, invstd = _fwd_stats(rt, x, eps, running_mean, running_var, momentum, block, splits)
        rt.kernel("k5_forward", "bn_fwd_apply")(
            _rows_grid(HW, N, C, block, 4), (block,),
            (x, out, mean, invstd, gamma, beta, np.int32(N), np.int32(C), np.int32(HW)),
        )
        return out, mean, var, invstd
    if running_mean is not None:
        raise ValueError("only the fused forward K5 updates running statistics")
    mean, var = stats(step, x, block=block, splits=splits)
    rt.kernel("apply", "bn_apply")(
        _rows_grid(HW, N, C, block), (block,),
        (x, out, mean, var, gamma, beta, np.float32(eps), np.int32(N), np.int32(C), np.int32(HW)),
    )
    invstd = (1.0 / xp.sqrt(var + np.float32(eps))).astype(xp.float32)
    return out, mean, var, invstd


def backward(dy, x, mean, invstd, gamma, *, block=256, splits=None):
    """K6: ``(dx, dgamma, dbeta)`` from the forward's saved ``mean`` and ``invstd``."""
    rt = runtime_for(x)
    xp = rt.xp
    N, C, HW = dims(x)
    _check_block(block)
    S = splits or default_splits(C, N * HW, block)
    partial = xp.empty(C * S * 2, xp.float32)
    counter = xp.zeros(C, xp.uint32)
    dgamma, dbeta = xp.empty(C, xp.float32), xp.empty(C, xp.float32)
    dx = xp.empty_like(x)
    i32 = np.int32
    rt.kernel("k6_backward", "bn_bwd_reduce")(
        (S, C), (block,), (dy, x, mean, invstd, partial, counter, dgamma, dbeta, i32(N), i32(C), i32(HW)))
    rt.kernel("k6_backward", "bn_bwd_elemt")(
        _rows_grid(HW, N, C, block), (block,),
        (dy, x, mean, invstd, gamma, dgamma, dbeta, dx, i32(N), i32(C), i32(HW)))
    return dx, dgamma, dbeta


def variance_error(offsets=(0.0, 1e2, 1e3, 1e4), shape=(8, 4, 8, 8), seed=0, block=64):
    """The numerics demonstration: float32 variance error of one-pass sum(x), sum(x^2) (K1)
    against Welford (K2), as the mean moves away from 0 while the true variance stays ~1.

    Returns ``[(offset, k1_error, k2_error), ...]`` with the error max |var - var64| / (1 + var64),
    var64 the float64 two-pass variance of the same float32 data. Runs on the CPU executor.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, shape)
    rows = []
    for offset in offsets:
        x = (base + offset).astype(np.float32)
        ref = x.astype(np.float64).var(axis=(0, 2, 3))
        errs = []
        for step in ("K1", "K2"):
            _, var = stats(step, x, block=block)
            errs.append(float(np.max(np.abs(var - ref) / (1.0 + ref))))
        rows.append((float(offset), errs[0], errs[1]))
    return rows

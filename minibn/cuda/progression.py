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

``STEPS`` is the one table of the progression: each CUDA C step knows its launches
(``step.launch(N, C, HW, block=..., mode=...)`` gives the kernels, grids, blocks, shared memory
and buffers of one pass), and the functions below, the tests, the benchmark and the lesson's
explorer all run from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from minibn.cuda.runtime import runtime_for

__all__ = [
    "Buffer",
    "Launch",
    "Plan",
    "STEPS",
    "Step",
    "backward",
    "default_splits",
    "dims",
    "execute",
    "forward",
    "stats",
    "variance_error",
]


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``args`` name buffers and scalars of the plan it belongs to."""

    file: str
    kernel: str
    grid: tuple
    block: tuple
    args: tuple
    shared_mem: int = 0
    phase: str = ""  # "stats", "finalize", "apply", "reduce", "elementwise"


@dataclass(frozen=True)
class Buffer:
    """An array a plan allocates: ``zero`` for counters a kernel increments, else uninitialized
    (like ``cupy.empty``; on the CPU the sanitizer then checks nothing reads it before a write)."""

    name: str
    size: int
    dtype: type = np.float32
    zero: bool = False


@dataclass(frozen=True)
class Plan:
    step: str
    mode: str
    launches: tuple
    buffers: tuple
    scalars: dict = field(default_factory=dict)
    outputs: tuple = ()


def dims(x):
    """``(N, C, HW)`` of an ``(N, C, *spatial)`` tensor (HW = 1 for ``(N, C)``)."""
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C) or (N, C, *spatial), got shape {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1]), int(prod(x.shape[2:]))


def default_splits(C, m, block, sm_count=None):
    """Blocks per channel for the grid split: enough for ~4 blocks per SM (of the current GPU,
    else an H100's 132), but never so many that a block gets fewer than 4 elements per thread."""
    if sm_count is None:
        from minibn.cuda.device import sm_count as device_sm_count

        sm_count = device_sm_count()
    wanted = -(-4 * sm_count // C)
    return max(1, min(wanted, m // (4 * block)))


def _check_block(block, power_of_two=False):
    if not isinstance(block, (int, np.integer)) or not 1 <= block <= 1024:
        raise ValueError(f"block must be a number of threads between 1 and 1024, got {block!r}")
    if power_of_two and block & (block - 1):
        raise ValueError(f"K1's tree needs a power-of-two block, got {block}")


def _rows_grid(HW, N, C, block, per_thread=1):
    # grid.y is at most 65535: the kernels stride over the N*C rows by gridDim.y.
    return (max(1, min(-(-HW // (block * per_thread)), 65535)), min(N * C, 65535))


_STATS_OUT = ("mean", "var")


def _stats_buffers(C):
    return (Buffer("mean", C), Buffer("var", C))


def _plan_k0(N, C, HW, block, S):
    return (Launch("k0_thread_per_channel", "bn_stats_k0", (-(-C // block),), (block,),
                   ("x", "mean", "var", "N", "C", "HW"), phase="stats"),), _stats_buffers(C)


def _plan_k1(N, C, HW, block, S):
    _check_block(block, power_of_two=True)
    return (Launch("k1_block_tree", "bn_stats_k1", (C,), (block,), ("x", "mean", "var", "N", "C", "HW"),
                   shared_mem=2 * block * 4, phase="stats"),), _stats_buffers(C)


def _plan_k2(N, C, HW, block, S):
    return (Launch("k2_welford_warp", "bn_stats_k2", (C,), (block,), ("x", "mean", "var", "N", "C", "HW"),
                   phase="stats"),), _stats_buffers(C)


def _grid_split(file, prefix):
    def plan(N, C, HW, block, S):
        launches = (
            Launch(file, prefix + "_partial", (S, C), (block,), ("x", "partial", "N", "C", "HW"), phase="stats"),
            Launch(file, prefix + "_finalize", (-(-C // 128),), (128,), ("partial", "mean", "var", "C", "S"),
                   phase="finalize"),
        )
        return launches, (Buffer("partial", C * S * 3),) + _stats_buffers(C)
    return plan


def _plan_k5(N, C, HW, block, S):
    launches = (Launch("k5_forward", "bn_fwd_stats", (S, C), (block,),
                       ("x", "partial", "counter", "mean", "var", "invstd", "running_mean", "running_var",
                        "N", "C", "HW", "eps", "momentum", "update_running"), phase="stats"),)
    buffers = (Buffer("partial", C * S * 3), Buffer("counter", C, np.uint32, zero=True)) + _stats_buffers(C) + (
        Buffer("invstd", C), Buffer("running_mean", 1, zero=True), Buffer("running_var", 1, zero=True))
    return launches, buffers


def _plan_k6(N, C, HW, block, S):
    launches = (
        Launch("k6_backward", "bn_bwd_reduce", (S, C), (block,),
               ("dy", "x", "mean", "invstd", "partial", "counter", "dgamma", "dbeta", "N", "C", "HW"),
               phase="reduce"),
        Launch("k6_backward", "bn_bwd_elemt", _rows_grid(HW, N, C, block, 4), (block,),
               ("dy", "x", "mean", "invstd", "gamma", "dgamma", "dbeta", "dx", "N", "C", "HW"),
               phase="elementwise"),
    )
    buffers = (Buffer("partial", C * S * 2), Buffer("counter", C, np.uint32, zero=True), Buffer("dgamma", C),
               Buffer("dbeta", C), Buffer("dx", N * C * HW))
    return launches, buffers


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    file: str  # kernels/<file>.cu, or "" for the CuPy-only steps
    kernels: tuple
    _plan: object = None  # (N, C, HW, block, S) -> (launches, buffers) of the step's own pass
    split: bool = False  # takes S blocks per channel

    @property
    def modes(self):
        if not self._plan:
            return ()
        return ("backward",) if self.key == "K6" else ("stats", "forward")

    def launch(self, N, C, HW, *, block=256, splits=None, mode="forward", eps=1e-5, momentum=0.1,
               update_running=False, sm_count=None):
        """The launches and buffers of one ``mode`` pass ("stats", "forward" or "backward") on an
        ``(N, C, HW)`` tensor: a ``Plan`` for ``execute``, or for timing on pre-allocated buffers."""
        if mode not in self.modes:
            raise ValueError(f"step {self.key} has no {mode!r} pass (it has: {', '.join(self.modes) or 'none'}"
                             f"{'; L0 and L1 are CuPy array code, run them with forward()/stats()' if not self._plan else ''})")
        _check_block(block)
        S = (splits or default_splits(C, N * HW, block, sm_count)) if self.split else 1
        launches, buffers = self._plan(N, C, HW, block, S)
        outputs = _STATS_OUT
        if mode == "forward":
            outputs = ("y", "mean", "var") + (("invstd",) if self.key == "K5" else ())
            if self.key == "K5":
                apply = Launch("k5_forward", "bn_fwd_apply", _rows_grid(HW, N, C, block, 4), (block,),
                               ("x", "y", "mean", "invstd", "gamma", "beta", "N", "C", "HW"), phase="apply")
            else:
                apply = Launch("apply", "bn_apply", _rows_grid(HW, N, C, block), (block,),
                               ("x", "y", "mean", "var", "gamma", "beta", "eps", "N", "C", "HW"), phase="apply")
            launches = launches + (apply,)
            buffers = buffers + (Buffer("y", N * C * HW),)
        elif mode == "backward":
            outputs = ("dx", "dgamma", "dbeta")
        i32, f32 = np.int32, np.float32
        scalars = {"N": i32(N), "C": i32(C), "HW": i32(HW), "S": i32(S), "eps": f32(eps),
                   "momentum": f32(momentum), "update_running": i32(bool(update_running))}
        return Plan(self.key, mode, launches, buffers, scalars, outputs)


STEPS = (
    Step("L0", "CuPy array ops", "", ()),
    Step("L1", "ElementwiseKernel + ReductionKernel", "", ()),
    Step("K0", "one thread per channel", "k0_thread_per_channel", ("bn_stats_k0",), _plan_k0),
    Step("K1", "block per channel, shared-memory tree (sum x, sum x^2)", "k1_block_tree", ("bn_stats_k1",),
         _plan_k1),
    Step("K2", "Welford + warp-shuffle Chan merge", "k2_welford_warp", ("bn_stats_k2",), _plan_k2),
    Step("K3", "grid split: partials + finalize", "k3_grid_split",
         ("bn_stats_k3_partial", "bn_stats_k3_finalize"), _grid_split("k3_grid_split", "bn_stats_k3"), True),
    Step("K4", "float4 loads, 4 accumulators per thread", "k4_vectorized",
         ("bn_stats_k4_partial", "bn_stats_k4_finalize"), _grid_split("k4_vectorized", "bn_stats_k4"), True),
    Step("K5", "fused forward: last-block ticket + running stats", "k5_forward",
         ("bn_fwd_stats", "bn_fwd_apply"), _plan_k5, True),
    Step("K6", "backward: one reduce pass + elementwise dx", "k6_backward",
         ("bn_bwd_reduce", "bn_bwd_elemt"), _plan_k6, True),
)
_BY_KEY = {s.key: s for s in STEPS}


def step(key):
    if key not in _BY_KEY:
        raise ValueError(f"no step {key!r}; the steps are {', '.join(_BY_KEY)}")
    return _BY_KEY[key]


def allocate(plan, rt, given=None):
    """Arrays for every buffer of ``plan`` not in ``given`` (NumPy on the CPU, CuPy on a GPU)."""
    arrays = dict(given or {})
    for b in plan.buffers:
        if b.name not in arrays:
            arrays[b.name] = rt.zeros(b.size, b.dtype) if b.zero else rt.empty(b.size, b.dtype)
    return arrays


def execute(plan, rt, arrays):
    """Run every launch of ``plan`` with ``arrays`` (by name; see ``allocate``) and its scalars."""
    for launch in plan.launches:
        args = tuple(plan.scalars[a] if a in plan.scalars else arrays[a] for a in launch.args)
        rt.kernel(launch.file, launch.kernel)(launch.grid, launch.block, args, shared_mem=launch.shared_mem)
    return arrays


def _run(key, mode, x, given, **settings):
    rt = runtime_for(x)
    N, C, HW = dims(x)
    plan = step(key).launch(N, C, HW, mode=mode, **settings)
    arrays = execute(plan, rt, allocate(plan, rt, given))
    return [arrays[name] for name in plan.outputs], rt


def stats(step, x, *, block=256, splits=None):
    """Per-channel ``(mean, var)`` of float32 NCHW ``x`` computed by kernel step ``step``."""
    if step in ("L0", "L1"):
        from minibn.cuda import cupy_steps

        return cupy_steps.stats(step, x)
    if step not in _BY_KEY or "stats" not in _BY_KEY[step].modes:
        raise ValueError(f"step must be one of L0, L1, K0-K5 for statistics, got {step!r}")
    (mean, var), _ = _run(step, "stats", x, {"x": x}, block=block, splits=splits)
    return mean, var


def forward(step, x, gamma, beta, eps=1e-5, *, block=256, splits=None, running_mean=None,
            running_var=None, momentum=0.1):
    """Training forward by step ``step``: returns ``(out, mean, var, invstd)``.

    K0-K4 compute the statistics and normalize with ``apply.cu``; K5 is the fused forward (and
    the only step that updates ``running_mean``/``running_var``, in place, when given).
    """
    if step in ("L0", "L1"):
        from minibn.cuda import cupy_steps

        return cupy_steps.forward(step, x, gamma, beta, eps)
    if step not in _BY_KEY or "forward" not in _BY_KEY[step].modes:
        raise ValueError(f"step must be one of L0, L1, K0-K5 for the forward pass, got {step!r}")
    update = running_mean is not None
    if update and step != "K5":
        raise ValueError("only the fused forward K5 updates running statistics")
    given = {"x": x, "gamma": gamma, "beta": beta}
    if update:
        given.update(running_mean=running_mean, running_var=running_var)
    outs, rt = _run(step, "forward", x, given, block=block, splits=splits, eps=eps, momentum=momentum,
                    update_running=update)
    y, mean, var = outs[0].reshape(x.shape), outs[1], outs[2]
    if step == "K5":
        return y, mean, var, outs[3]
    xp = rt.xp
    invstd = (1.0 / xp.sqrt(var + np.float32(eps))).astype(xp.float32)
    return y, mean, var, invstd


def backward(dy, x, mean, invstd, gamma, *, block=256, splits=None):
    """K6: ``(dx, dgamma, dbeta)`` from the forward's saved ``mean`` and ``invstd``."""
    given = {"dy": dy, "x": x, "mean": mean, "invstd": invstd, "gamma": gamma}
    (dx, dgamma, dbeta), _ = _run("K6", "backward", x, given, block=block, splits=splits)
    return dx.reshape(x.shape), dgamma, dbeta


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
        for key in ("K1", "K2"):
            _, var = stats(key, x, block=block)
            errs.append(float(np.max(np.abs(var - ref) / (1.0 + ref))))
        rows.append((float(offset), errs[0], errs[1]))
    return rows

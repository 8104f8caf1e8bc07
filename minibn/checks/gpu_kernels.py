"""Checks for lesson 06-gpu-kernels: BatchNorm kernels written in CUDA C.

Each learner function returns a kernel's CUDA C source as a string (it may
``#include "welford.cuh"``). A check compiles it, launches it on generated NCHW float32 cases and
compares what it wrote with float64 NumPy:

- with no GPU it runs through ``minibn.cuda.executor`` (g++ and the fiber shim) with its
  sanitizer on, twice, with the threads in forward and in reverse order. The sanitizer names a
  race, an out-of-bounds or uninitialized access, or a misused barrier or shuffle (kernel,
  thread, array and index, line, what to change); a kernel whose answer depends on the order has
  a race the comparison shows even when the sanitizer cannot. Inputs are copied into device-like
  arrays (aligned, red zones around them) and outputs start uninitialized (NaN, and tracked: a
  kernel reading an output before writing it is told so);
- with a GPU (``cupy.is_available()``) it runs once through CuPy, unless
  ``MINIBN_KERNEL_DEVICE=cpu`` asks for the CPU executor anyway. The race-fixing exercise always
  runs on the CPU: only there can a race be seen for certain.

Kernels and the launches the checks make (the lesson states them too):
- ``bn_stats_k0(x, mean, var, N, C, HW)``: grid ``ceil(C / 32)``, block 32, one thread per channel;
- ``bn_stats_k1(x, mean, var, N, C, HW)``: grid ``C``, block 64 or 128, dynamic shared memory
  ``2 * blockDim.x`` floats (sums, then sums of squares);
- ``bn_stats_k2(x, mean, var, N, C, HW)``: grid ``C``, block 64 or 96 (a multiple of 32);
- ``bn_stats_k3_finalize(partial, mean, var, C, S)``: grid ``ceil(C / 32)``, block 32; ``partial``
  holds ``C * S`` summaries ``(n, mean, M2)``, channel-major, some possibly empty (``n = 0``);
- ``channel_sums(x, sums, N, C, HW)``: grid ``(S, C)`` (S blocks per channel), block 64, then 48
  (a partial last warp); ``sums`` starts at zero, and each channel's blocks add their totals to it;
- ``bn_bwd_elemt(dy, x, mean, invstd, gamma, dgamma, dbeta, dx, N, C, HW)``: grid
  ``(ceil(HW / 64), N * C)``, block 64: one grid row per (n, c) row of the tensor.
``mean``/``var`` are per channel, biased (divide by ``m = N * HW``).

Each kernel is an ``Exercise`` named after its learner function (which keys its grading seed);
its public cases run at every block size above, its hidden ones at the first. At grading time
``run_launches`` is replaced by a launcher that runs the kernel in a sandboxed worker
(``minibn.grading.kernel_worker``): the kernel is learner code, the comparisons stay in the grader.
"""
from __future__ import annotations

import os
import re

import numpy as np

from minibn.checks._core import (
    CONDITIONING_FACTOR,
    Case,
    Exercise,
    Hint,
    assert_close,
    quiet,
    require_callable,
)

__all__ = [
    "check_thread_per_channel",
    "check_thread_per_channel_randomized",
    "check_block_tree",
    "check_block_tree_randomized",
    "check_welford_warp",
    "check_welford_warp_randomized",
    "check_grid_finalize",
    "check_grid_finalize_randomized",
    "check_backward_elementwise",
    "check_backward_elementwise_randomized",
    "check_channel_sums",
    "check_channel_sums_randomized",
]

_ORDERS = ("forward", "reverse")


# ---- compiling and launching the learner's source ---------------------------------------------

def _source(fn, fn_name, kernel):
    require_callable(fn, fn_name)
    with quiet():
        code = fn()
    if not isinstance(code, str):
        raise AssertionError(f"{fn_name}() must return the kernel's CUDA C source as a str, "
                             f"got {type(code).__name__}")
    if not re.search(rf"__global__\s+void\s+{kernel}\s*\(", code):
        raise AssertionError(f"{fn_name}() must return a source defining "
                             f'extern "C" __global__ void {kernel}(...)')
    if not re.search(rf'extern\s+"C"\s+__global__\s+void\s+{kernel}\s*\(', code):
        raise AssertionError(f'declare the kernel as extern "C" __global__ void {kernel}(...): without '
                             "extern \"C\" the C++ compiler mangles its name and CuPy cannot find it")
    from minibn.cuda.sources import inline_includes

    try:
        return inline_includes(code, "your_kernel.cu")
    except ValueError as err:
        raise AssertionError(str(err)) from None


def _on_gpu():
    """Grade on the GPU when there is one, unless ``MINIBN_KERNEL_DEVICE=cpu`` asks for the CPU
    executor (stricter: the sanitizer, two schedules, divergent barriers and deadlocks by name)."""
    from minibn.cuda.runtime import gpu_available

    return os.environ.get("MINIBN_KERNEL_DEVICE", "").lower() != "cpu" and gpu_available()


def _launch(code, kernel, grid, block, args, outputs, case, shared_mem=0, *, cpu_only=False,
            same_bits=True, zeroed=()):
    """Launch once per schedule (CPU, sanitized) or once (GPU); return the arrays the kernel writes.

    ``outputs`` maps the index of each written argument to its name. Outputs start uninitialized
    (NaN; on the CPU the sanitizer also reports a read before the kernel's first write), except
    those in ``zeroed``, which start at 0. ``same_bits=False`` skips the comparison of the two
    schedules, for kernels whose float atomics legitimately add in a different order."""
    runs = run_launches(code, kernel, grid, block, args, dict(outputs), case.description, shared_mem,
                        cpu_only=cpu_only, zeroed=tuple(zeroed))
    if len(runs) == 2 and same_bits:
        for name, a, b in zip(outputs.values(), *runs):
            if not np.array_equal(a, b, equal_nan=True):
                raise AssertionError(
                    f"{kernel} writes different {name} when its threads run in a different order "
                    f"({case.description}): forward order gives {_first(a)}, reverse order "
                    f"{_first(b)}. On a GPU the order is never fixed, so the kernel has a race. "
                    "Hint: a thread reads shared memory that another thread writes without a "
                    "__syncthreads() between the write and the read (after filling shared memory, "
                    "and after every step of a tree)."
                )
    return runs[0]


def launch_here(code, kernel, grid, block, args, outputs, description, shared_mem=0, *,
                cpu_only=False, zeroed=()):
    """Compile and run the kernel in this process: a list of runs (one per schedule on the CPU,
    one on the GPU), each the list of the ``outputs`` arrays; a failure is an ``AssertionError``
    with the compiler's or the sanitizer's message."""
    from minibn.cuda import cpu_memory
    from minibn.cuda.executor import CompileError, KernelError, schedule
    from minibn.cuda.runtime import runtime_for
    from minibn.cuda.sanitizer import SanitizerError

    gpu = _on_gpu() and not cpu_only
    runs = []
    for order in (("gpu",) if gpu else _ORDERS):
        if order == "gpu":
            fresh = [(np.zeros_like(a) if i in zeroed else np.full_like(a, np.nan)) if i in outputs else a
                     for i, a in enumerate(args)]
        else:
            fresh = [(cpu_memory.zeros(a.shape, a.dtype) if i in zeroed else cpu_memory.empty_like(a))
                     if i in outputs else (cpu_memory.to_device(a) if isinstance(a, np.ndarray) else a)
                     for i, a in enumerate(args)]
        try:
            if order == "gpu":
                import cupy

                dev = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in fresh]
                runtime_for(dev[0]).compile(code, "your_kernel.cu").get_function(kernel)(
                    grid, block, tuple(dev), shared_mem=shared_mem)
                runs.append([cupy.asnumpy(dev[i]) for i in outputs])
                continue
            with schedule(order):
                runtime_for(fresh[0]).compile(code, "your_kernel.cu").get_function(kernel)(
                    grid, block, tuple(fresh), shared_mem=shared_mem, sanitize=True)
        except CompileError as err:
            raise AssertionError(str(err)) from None
        except SanitizerError as err:
            raise AssertionError(f"{kernel} failed ({description}, block {_dims_text(block)}): {err}"
                                 f"{_sanitizer_hint(err)}") from None
        except KernelError as err:
            raise AssertionError(f"{kernel} failed ({description}): {err}"
                                 f"{_launch_hint(str(err))}") from None
        except Exception as err:  # CuPy's compile and launch errors
            raise AssertionError(f"{kernel} failed on the GPU ({description}): "
                                 f"{type(err).__name__}: {err}") from None
        runs.append([np.array(fresh[i]) for i in outputs])
    return runs


# What ``_launch`` runs the learner's kernel with. The grader puts a launcher here that runs the
# kernel in a sandboxed worker of its own (``minibn.grading.kernel_worker``): the kernel is learner
# code, the comparisons stay in the grader.
run_launches = launch_here


def _dims_text(block):
    dims = (block,) if isinstance(block, int) else tuple(block)
    return "x".join(str(d) for d in dims)


def _first(a):
    return np.array2string(np.asarray(a).reshape(-1)[:4], precision=5)


def _sanitizer_hint(err):
    """What the sanitizer's class means for a lesson-06 kernel (its message already says where)."""
    specific = _launch_hint(str(err)) if err.tool == "synccheck" else ""
    if specific:
        return specific
    return {
        "racecheck": ("\nHint (racecheck): two threads touch the same word and nothing orders them. "
                      "Inside a block, a __syncthreads() between a write and another thread's read "
                      "orders them; between blocks nothing does, so combine blocks' results with "
                      "atomicAdd or through per-block partials."),
        "memcheck": ("\nHint (memcheck): an index went past an array. Check loop bounds (`<` vs `<=`), "
                     "the `i < HW` guard, and that dynamic shared memory is indexed within what the "
                     "launch gives."),
        "initcheck": ("\nHint (initcheck): the kernel read memory nothing wrote: shared memory starts "
                      "as garbage in every block, and the outputs start uninitialized. Write a slot "
                      "before any thread reads it (threads with nothing to contribute write 0)."),
        "synccheck": ("\nHint (synccheck): every thread of a block must meet at the same __syncthreads(), "
                      "and a shuffle's mask must name only lanes that exist and call it (a block of 48 "
                      "threads has a last warp of 16 lanes; __activemask() gives them)."),
    }.get(err.tool, "")


def _launch_hint(message):
    if "divergent __syncthreads" in message:
        return ("\nHint: every thread of the block must reach every __syncthreads(): put it outside "
                "`if (t < stride)`, and don't `return` early from a kernel that synchronizes.")
    if "dynamic shared memory" in message:
        return ("\nHint: the check launches this kernel with the dynamic shared memory the exercise "
                "states; index extern __shared__ arrays within it (or use fixed-size __shared__ arrays).")
    if "deadlock" in message or "exited" in message:
        return ("\nHint: a warp shuffle with mask 0xffffffff needs all 32 lanes of the warp to call "
                "it; keep shuffles out of branches that only some lanes take.")
    return ""


# ---- statistics kernels -----------------------------------------------------------------------

def _stats_case(description, shape, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.0, rng.uniform(0.5, 2.0), shape) + offset).astype(np.float32)
    return Case(description, {"x": x}, {"offset": offset})


def _stats_cases():
    return [
        _stats_case("x of shape (2, 3, 4, 4)", (2, 3, 4, 4), 0.0, 1),
        _stats_case("x of shape (3, 2, 5, 7): N*H*W = 105, not a multiple of 32", (3, 2, 5, 7), 1.0, 2),
        _stats_case("x of shape (2, 1, 3, 3): C = 1, H*W smaller than a warp", (2, 1, 3, 3), -1.0, 3),
        _stats_case("x of shape (4, 5, 2, 3) with mean about 3", (4, 5, 2, 3), 3.0, 4),
        _stats_case("x of shape (1, 2, 3, 5): one sample, so a channel's values are one row", (1, 2, 3, 5),
                    0.5, 5),
    ]


def _random_stats_cases(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(1, 8)),
                 int(rng.integers(2, 8)))
        offset = float(rng.choice([0.0, 2.0, -4.0]))
        cases.append(_stats_case(f"x of shape {shape}", shape, offset, int(rng.integers(2**31))))
    return cases


def _with_block(cases, block):
    """The same cases, launched with ``block`` threads (an exercise checks several)."""
    return [Case(c.description, c.arrays, {**c.params, "block": block}) for c in cases]


def _dims(x):
    return x.shape[0], x.shape[1], int(np.prod(x.shape[2:]))


def _pooled(x64, how):
    """Per-channel value lists for a correct or a known-wrong indexing of NCHW ``x``."""
    N, C, HW = _dims(x64)
    flat = x64.reshape(-1)
    if how == "nchw":
        return x64.reshape(N, C, HW).transpose(1, 0, 2).reshape(C, -1)
    if how == "cnhw":  # (c * N + n) * HW + i: channels taken as the outer axis
        return flat.reshape(C, N * HW)
    if how == "no_c":  # n * HW + i: the channel forgotten
        return np.tile(flat[: N * HW], (C, 1))
    if how == "first_sample":  # only n = 0
        return x64[0].reshape(C, HW)
    raise ValueError(how)


def _index_hints(x64, stat):
    fn = (lambda v: v.mean(axis=1)) if stat == "mean" else (lambda v: v.var(axis=1))
    return [
        Hint(fn(_pooled(x64, "cnhw")), "the index treats x as (C, N, H, W). In NCHW, element "
             "(n, c, i) of channel c sits at (n * C + c) * HW + i."),
        Hint(fn(_pooled(x64, "no_c")), "the index ignores the channel: every channel got the "
             "statistics of the first N*H*W values. Element (n, c, i) sits at (n * C + c) * HW + i."),
        Hint(fn(_pooled(x64, "first_sample")), "the statistics cover sample n = 0 only; a "
             "channel's statistics pool all N samples (m = N * H * W values)."),
    ]


def _tolerances(case, stat):
    scale = 1.0 + abs(case["offset"])
    if stat == "mean":
        return 2e-6 * scale, 1e-5
    return 5e-6 * scale * scale, 1e-4


def _stats_check(fn_name, kernel, launch):
    """``check_case`` of a statistics kernel: ``launch(C, block)`` gives grid, block, shared memory."""
    def check_case(fn, case):
        code = _source(fn, fn_name, kernel)
        x = case["x"]
        N, C, HW = _dims(x)
        grid, block, shared = launch(C, case["block"])
        args = (x, np.zeros(C, np.float32), np.zeros(C, np.float32), np.int32(N), np.int32(C),
                np.int32(HW))
        mean, var = _launch(code, kernel, grid, block, args, {1: "mean", 2: "var"}, case, shared)
        x64 = x.astype(np.float64)
        values = _pooled(x64, "nchw")
        if case.params.get("stable"):
            with quiet():
                assert_close("var", var, values.var(axis=1), case, atol=1e-3, rtol=1e-3,
                             note="Welford's update keeps float32 variance accurate far from zero, where "
                             "E[x^2] - mean^2 loses about 6 of its 7 digits: update the mean and M2 per "
                             "element and merge with Chan's formula, never sum x^2.")
            return
        m = values.shape[1]
        want_mean, want_var = values.mean(axis=1), values.var(axis=1)
        atol, rtol = _tolerances(case, "mean")
        with quiet():
            assert_close("mean", mean, want_mean, case, atol=atol, rtol=rtol,
                         hints=_index_hints(x64, "mean"))
        atol, rtol = _tolerances(case, "var")
        hints = [
            Hint(want_var * m / max(m - 1, 1), "var divides by m - 1 (the unbiased variance); "
                 "BatchNorm normalizes with the biased variance, dividing by m = N * H * W."),
            Hint((values**2).mean(axis=1), "var is E[x^2]; subtract the squared mean: "
                 "var = E[x^2] - mean^2."),
            Hint(np.sqrt(want_var), "this is the standard deviation; var is its square."),
            *_index_hints(x64, "var"),
        ]
        with quiet():
            assert_close("var", var, want_var, case, atol=atol, rtol=rtol, hints=hints)
    return check_case


def _stats_exercise(name, kernel, launch, blocks, summary, first=()):
    """A statistics kernel's exercise: the public cases (``first`` ones first) at each of
    ``blocks``, the hidden ones at the first."""
    return Exercise(name, lambda: list(first) + [c for b in blocks for c in _with_block(_stats_cases(), b)],
                    lambda seed: _with_block(_random_stats_cases(seed), blocks[0]),
                    _stats_check(name, kernel, launch), summary=summary)


def _k0_launch(C, block):
    return (-(-C // block),), (block,), 0


def _tree_launch(C, block):
    return (C,), (block,), 2 * block * 4


def _warp_launch(C, block):
    return (C,), (block,), 0


# Welford's point: the variance stays accurate when the mean is far from zero (only var is compared).
_STABLE = Case("x of shape (4, 2, 6, 6) with mean 1000", _stats_case("", (4, 2, 6, 6), 1000.0, 9).arrays,
               {"offset": 1000.0, "block": 64, "stable": True})


THREAD_PER_CHANNEL = _stats_exercise("bn_stats_k0_source", "bn_stats_k0", _k0_launch, (32,),
                                     "the source of bn_stats_k0: one thread per channel")
BLOCK_TREE = _stats_exercise("bn_stats_k1_source", "bn_stats_k1", _tree_launch, (64, 128),
                             "the source of bn_stats_k1: a block per channel, shared-memory tree")
WELFORD_WARP = _stats_exercise("bn_stats_k2_source", "bn_stats_k2", _warp_launch, (64, 96),
                               "the source of bn_stats_k2: Welford per thread, warp-shuffle merge",
                               first=(_STABLE,))
check_thread_per_channel, check_thread_per_channel_randomized = THREAD_PER_CHANNEL.checks(
    "check_thread_per_channel", module=__name__)
check_block_tree, check_block_tree_randomized = BLOCK_TREE.checks("check_block_tree", module=__name__)
check_welford_warp, check_welford_warp_randomized = WELFORD_WARP.checks("check_welford_warp", module=__name__)


# ---- grid-split finalize: Chan's merge of per-slice partials ----------------------------------

def _finalize_case(description, shape, splits, offset, seed):
    """Partials exactly as K3's first kernel writes them: slice s of channel c covers elements
    [s * chunk, (s + 1) * chunk) of the channel, chunk = ceil(m / S); an empty slice is (0, 0, 0)."""
    case = _stats_case(description, shape, offset, seed)
    values = _pooled(case["x"].astype(np.float64), "nchw")
    C, m = values.shape
    chunk = -(-m // splits)
    partial = np.zeros((C, splits, 3))
    for s in range(splits):
        part = values[:, s * chunk:(s + 1) * chunk]
        if part.shape[1]:
            partial[:, s] = np.stack([np.full(C, part.shape[1]), part.mean(axis=1),
                                      ((part - part.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)], axis=1)
    case.arrays["partial"] = partial.astype(np.float32)
    case.params["S"] = splits
    return case


def _finalize_hints(partial, want_var):
    n, mu, m2 = (partial[:, :, k].astype(np.float64) for k in range(3))
    total = n.sum(axis=1)
    used = n > 0
    plain_mean = np.where(used, mu, 0).sum(axis=1) / used.sum(axis=1)
    return [
        Hint(plain_mean, "the means are averaged without weights; weight each slice's mean by its "
             "count: mean = mean_a + delta * n_b / (n_a + n_b)."),
    ], [
        Hint(m2.sum(axis=1) / total, "var adds up the slices' M2 only; Chan's merge also adds "
             "delta^2 * n_a * n_b / n, the spread between the slices' means."),
        Hint(want_var * total / (total - 1), "var divides by n - 1; BatchNorm uses the biased "
             "variance M2 / n."),
    ]


def _check_finalize_case(fn, case):
    code = _source(fn, "bn_stats_k3_finalize_source", "bn_stats_k3_finalize")
    partial = case["partial"]
    C, S = partial.shape[0], case["S"]
    args = (partial.reshape(-1), np.zeros(C, np.float32), np.zeros(C, np.float32), np.int32(C),
            np.int32(S))
    mean, var = _launch(code, "bn_stats_k3_finalize", (-(-C // 32),), (32,), args,
                        {1: "mean", 2: "var"}, case)
    values = _pooled(case["x"].astype(np.float64), "nchw")
    want_mean, want_var = values.mean(axis=1), values.var(axis=1)
    mean_hints, var_hints = _finalize_hints(partial, want_var)
    empty = " Hint: skip an empty slice (n = 0): merging two empty summaries divides 0 by 0."
    for name, got, want, hints in (("mean", mean, want_mean, mean_hints), ("var", var, want_var, var_hints)):
        if not np.isfinite(got).all() and (partial[:, :, 0] == 0).any():
            raise AssertionError(f"{name} contains NaN or inf ({case.description}; some slices are "
                                 f"empty).{empty}")
        atol, rtol = _tolerances(case, name)
        with quiet():
            assert_close(name, got, want, case, atol=atol, rtol=rtol, hints=hints)


def _finalize_cases():
    return [
        _finalize_case("x of shape (2, 3, 4, 4) in 4 slices per channel", (2, 3, 4, 4), 4, 2.0, 21),
        _finalize_case("x of shape (1, 2, 3, 3) in 4 slices: 9 values in slices of 3, so the last "
                       "slice is empty", (1, 2, 3, 3), 4, 0.0, 22),
        _finalize_case("x of shape (4, 1, 5, 2) in 3 slices, mean about 50", (4, 1, 5, 2), 3, 50.0, 23),
        _finalize_case("x of shape (2, 5, 2, 3) in 1 slice", (2, 5, 2, 3), 1, -1.0, 24),
    ]


def _finalize_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 6)),
                 int(rng.integers(2, 6)))
        splits = int(rng.integers(1, 7))
        cases.append(_finalize_case(f"x of shape {shape} in {splits} slices", shape, splits,
                                    float(rng.choice([0.0, 3.0, -20.0])), int(rng.integers(2**31))))
    return cases


FINALIZE = Exercise("bn_stats_k3_finalize_source", _finalize_cases, _finalize_randomized, _check_finalize_case,
                    summary="the source of bn_stats_k3_finalize: merge S partials per channel")
check_grid_finalize, check_grid_finalize_randomized = FINALIZE.checks("check_grid_finalize", module=__name__)


# ---- fixing a racy kernel: per-channel sums over a grid split ---------------------------------

# The kernel the lesson hands out, with three bugs the sanitizer names one at a time.
RACY_CHANNEL_SUMS = r"""
extern "C" __global__ void channel_sums(const float* __restrict__ x, float* __restrict__ sums,
                                        int N, int C, int HW) {
    __shared__ float warp_sums[32];
    int s = blockIdx.x, S = gridDim.x, c = blockIdx.y;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    long long m = (long long)N * HW;
    float v = 0.0f;
    for (long long j = (long long)s * blockDim.x + threadIdx.x; j < m; j += (long long)S * blockDim.x) {
        long long n = j / HW;
        v += x[(n * C + c) * HW + (j - n * HW)];
    }
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_sums[warp] = v;
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += warp_sums[w];
        sums[c] += total;
    }
}
"""


def _sums_case(description, shape, splits, seed):
    case = _stats_case(description, shape, 0.5, seed)
    case.params["S"] = splits
    return case


def _sums_cases():
    return [
        _sums_case("x of shape (2, 3, 5, 7) in 3 blocks per channel", (2, 3, 5, 7), 3, 31),
        _sums_case("x of shape (4, 2, 6, 6) in 5 blocks per channel", (4, 2, 6, 6), 5, 32),
        _sums_case("x of shape (3, 1, 4, 4) in 1 block per channel", (3, 1, 4, 4), 1, 33),
        _sums_case("x of shape (1, 2, 3, 5) in 2 blocks per channel: one sample", (1, 2, 3, 5), 2, 34),
    ]


def _check_sums_case(fn, case):
    code = _source(fn, "channel_sums_source", "channel_sums")
    block = case["block"]
    x = case["x"]
    N, C, HW = _dims(x)
    args = (x, np.zeros(C, np.float32), np.int32(N), np.int32(C), np.int32(HW))
    # Race-free answers may add floats atomically in any order: compare with a tolerance,
    # not bit for bit across the two schedules.
    (sums,) = _launch(code, "channel_sums", (case["S"], C), (block,), args, {1: "sums"}, case,
                      cpu_only=True, same_bits=False, zeroed=(1,))
    values = _pooled(x.astype(np.float64), "nchw")
    want = values.sum(axis=1)
    hints = [Hint(want / case["S"], "only one block's total reached each channel's sum: every "
                  "block must add its total (atomicAdd(&sums[c], total)).")]
    if not np.isfinite(sums).all():
        raise AssertionError(
            f"sums contains NaN ({case.description}, block {block}). Hint: a lane added a value "
            "it shuffled from a lane that does not exist (in a block of 48 threads the last warp "
            "has 16 lanes, and a value read from outside the mask is undefined): add the "
            "shuffled value only when lane + offset is below the warp's lane count.")
    with quiet():
        assert_close("sums", sums, want, case, atol=1e-5 * np.sqrt(values.shape[1]) * 4,
                     rtol=1e-5, hints=hints,
                     note=f"launched with grid ({case['S']}, {C}) and block {block}")


def _sums_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(2):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 7)),
                 int(rng.integers(2, 7)))
        splits = int(rng.integers(1, 6))
        cases.append(_sums_case(f"x of shape {shape} in {splits} blocks per channel", shape, splits,
                                int(rng.integers(2**31))))
    return _with_block(cases, 64) + _with_block(cases, 48)


SUMS = Exercise("channel_sums_source", lambda: _with_block(_sums_cases(), 64) + _with_block(_sums_cases(), 48),
                _sums_randomized, _check_sums_case,
                summary="the source of channel_sums, fixed: per-channel sums, no race")
check_channel_sums, check_channel_sums_randomized = SUMS.checks("check_channel_sums", module=__name__)


# ---- backward elementwise kernel --------------------------------------------------------------

def _bwd_case(description, shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(0.5, 1.5, shape).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    gamma = (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(np.float32)
    x64 = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x64.mean(axis=axes)
    invstd = 1.0 / np.sqrt(x64.var(axis=axes) + 1e-5)
    b = (1, c) + (1,) * (x.ndim - 2)
    x_hat = (x64 - mean.reshape(b)) * invstd.reshape(b)
    dbeta = dy.astype(np.float64).sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    arrays = {"x": x, "dy": dy, "gamma": gamma, "mean": mean.astype(np.float32),
              "invstd": invstd.astype(np.float32), "dgamma": dgamma.astype(np.float32),
              "dbeta": dbeta.astype(np.float32), "x_hat": x_hat}
    return Case(description, arrays)


def _bwd_cases():
    return [
        _bwd_case("x of shape (2, 3, 4, 4)", (2, 3, 4, 4), 11),
        _bwd_case("x of shape (3, 2, 5, 7): H*W = 35, not a multiple of the block", (3, 2, 5, 7), 12),
        _bwd_case("x of shape (4, 1, 2, 3): C = 1", (4, 1, 2, 3), 13),
        _bwd_case("x of shape (1, 2, 3, 5): one sample", (1, 2, 3, 5), 14),
    ]


def _bwd_variants(case):
    x_hat = case["x_hat"]
    c = x_hat.shape[1]
    b = (1, c) + (1,) * (x_hat.ndim - 2)
    m = x_hat.size // c
    dy = case["dy"].astype(np.float64)
    g = case["gamma"].astype(np.float64).reshape(b)
    inv = case["invstd"].astype(np.float64).reshape(b)
    mdb = case["dbeta"].astype(np.float64).reshape(b) / m
    mdg = case["dgamma"].astype(np.float64).reshape(b) / m
    return {
        "right": g * inv * (dy - mdb - x_hat * mdg),
        "frozen": g * inv * dy,
        "no_mean": g * inv * (dy - x_hat * mdg),
        "no_var": g * inv * (dy - mdb),
        "no_gamma": inv * (dy - mdb - x_hat * mdg),
        "no_m": g * inv * (dy - mdb * m - x_hat * mdg * m),
    }


def _bwd_atol(case):
    """Per-channel atol for dx: 1e-5, plus what float32 x - mean costs a correct kernel.

    The kernel rebuilds x_hat from float32 x, mean and invstd; where a channel's values sit far
    from zero relative to their spread (two values close together, say), x - mean loses digits,
    an error of about eps32 * kappa in x_hat (kappa = max|x| * invstd), which dx carries times
    |gamma| * invstd * |dgamma| / m. ``CONDITIONING_FACTOR`` roundings, as lesson 02's backward
    checks allow."""
    x = case["x"].astype(np.float64)
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    b = (1, c) + (1,) * (x.ndim - 2)
    m = x.size // c
    inv = case["invstd"].astype(np.float64)
    kappa = np.abs(x).max(axis=axes) * inv
    scale = np.abs(case["gamma"].astype(np.float64)) * inv * (
        np.abs(case["dy"].astype(np.float64)).max(axis=axes) + np.abs(case["dgamma"]) / m)
    return (1e-5 + CONDITIONING_FACTOR * np.finfo(np.float32).eps * kappa * scale).reshape(b)


def _check_bwd_case(fn, case):
    code = _source(fn, "bn_bwd_elemt_source", "bn_bwd_elemt")
    x = case["x"]
    N, C, HW = _dims(x)
    args = (case["dy"], x, case["mean"], case["invstd"], case["gamma"], case["dgamma"],
            case["dbeta"], np.zeros_like(x), np.int32(N), np.int32(C), np.int32(HW))
    (dx,) = _launch(code, "bn_bwd_elemt", (-(-HW // 64), N * C), (64,), args, {7: "dx"}, case)
    v = _bwd_variants(case)
    hints = [
        Hint(v["frozen"], "dx ignores the paths through the batch mean and variance: subtract "
             "dbeta / m and x_hat * dgamma / m from dy."),
        Hint(v["no_mean"], "dx is missing the -dbeta / m term (the path through the mean)."),
        Hint(v["no_var"], "dx is missing the -x_hat * dgamma / m term (the path through the "
             "variance)."),
        Hint(v["no_gamma"], "dx is missing the factor gamma[c]."),
        Hint(v["no_m"], "dbeta and dgamma are sums over m = N * H * W values; divide them by m."),
    ]
    with quiet():
        assert_close("dx", dx, v["right"], case, atol=_bwd_atol(case), rtol=1e-4, hints=hints)


def _bwd_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 5)), int(rng.integers(1, 9)),
                 int(rng.integers(2, 9)))
        cases.append(_bwd_case(f"x of shape {shape}", shape, int(rng.integers(2**31))))
    return cases


BACKWARD = Exercise("bn_bwd_elemt_source", _bwd_cases, _bwd_randomized, _check_bwd_case,
                    summary="the source of bn_bwd_elemt: dx from the reduced sums")
check_backward_elementwise, check_backward_elementwise_randomized = BACKWARD.checks(
    "check_backward_elementwise", module=__name__)

EXERCISES = (THREAD_PER_CHANNEL, BLOCK_TREE, WELFORD_WARP, FINALIZE, SUMS, BACKWARD)

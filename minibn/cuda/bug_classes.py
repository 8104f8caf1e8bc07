"""Six classic GPU bugs, each as a small kernel with its fixed twin.

Each one runs silently on a CPU that executes threads one after another, and gives plausible
numbers; each is wrong or undefined on a GPU. The CPU executor's sanitizer names every one
(tests/cuda/test_sanitizer.py holds it to that; lesson 06 shows them):

| key               | bug                                                        | tool      |
|-------------------|------------------------------------------------------------|-----------|
| shared_word       | every thread does ``s += v`` on one ``__shared__`` word    | racecheck |
| grid_total        | every block does ``out[0] += partial`` in global memory    | racecheck |
| read_past_end     | a read one past the end of an input array                  | memcheck  |
| write_past_end    | a write one past the end of an output array                | memcheck  |
| partial_warp      | a full-mask ``__shfl_xor_sync`` in a 48-thread block       | synccheck |
| unwritten_shared  | threads read ``__shared__`` slots nobody wrote             | initcheck |

``BUGS[key].run(which)`` launches the ``"buggy"`` or ``"fixed"`` kernel through ``CpuRawKernel``
on its own small case and returns ``(got, want)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minibn.cuda import cpu_memory

__all__ = ["BUGS", "Bug"]


@dataclass(frozen=True)
class Bug:
    key: str
    title: str
    tool: str  # what the sanitizer reports for the buggy kernel
    kernel: str
    buggy: str
    fixed: str
    grid: tuple
    block: tuple
    case: object  # () -> (args, index of the output, expected output)
    rtol: float = 1e-5

    def run(self, which="fixed", *, sanitize=None):
        """Launch the ``which`` kernel on this bug's case: ``(output, expected)``."""
        from minibn.cuda.executor import CpuRawKernel

        args, out, want = self.case()
        CpuRawKernel(getattr(self, which), self.kernel)(self.grid, self.block, args, sanitize=sanitize)
        return args[out], want


def _values(n, seed=0):
    return cpu_memory.to_device(np.random.default_rng(seed).uniform(0.5, 1.5, n).astype(np.float32))


SHARED_WORD = r"""
extern "C" __global__ void block_total(const float* x, float* out, int n) {
    __shared__ float s;
    if (threadIdx.x == 0) s = 0.0f;
    __syncthreads();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) s += x[i];  // every thread: a read-modify-write of one shared word
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}
"""


def _shared_word_case():
    x = _values(200)
    want = np.array([x[k * 64:(k + 1) * 64].astype(np.float64).sum() for k in range(4)])
    return (x, cpu_memory.empty(4), np.int32(200)), 1, want


GRID_TOTAL = r"""
extern "C" __global__ void grid_total(const float* x, float* total, int n) {
    __shared__ float warp_sums[32];
    int t = threadIdx.x, lane = t % 32, warp = t / 32;
    int i = blockIdx.x * blockDim.x + t;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (int w = 0; w < blockDim.x / 32; ++w) s += warp_sums[w];
        total[0] += s;  // every block: a plain read-modify-write of one global word
    }
}
"""


def _grid_total_case():
    x = _values(250, 1)
    return (x, cpu_memory.zeros(1), np.int32(250)), 1, np.array([x.astype(np.float64).sum()])


READ_PAST_END = r"""
extern "C" __global__ void differences(const float* x, float* d, int n) {
    // d[i] = x[i + 1] - x[i] for the n - 1 neighbouring pairs
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) d[i] = x[i + 1] - x[i];  // the last thread reads x[n]
}
"""


def _read_past_end_case():
    x = _values(100, 2)
    return (x, cpu_memory.empty(99), np.int32(100)), 1, np.diff(x.astype(np.float64))


WRITE_PAST_END = r"""
extern "C" __global__ void squares(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = (float)i * (float)i;  // i == n writes one past the end
}
"""


def _write_past_end_case():
    return (cpu_memory.empty(100), np.int32(100)), 0, np.arange(100.0) ** 2


PARTIAL_WARP = r"""
extern "C" __global__ void warp_sums(const float* x, float* out) {
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);  // lanes 16-31 of warp 1?
    if (threadIdx.x % 32 == 0) out[blockIdx.x * 2 + threadIdx.x / 32] = v;
}
"""


def _partial_warp_case():
    x = _values(96, 3)
    blocks = x.astype(np.float64).reshape(2, 48)
    want = np.stack([blocks[:, :32].sum(axis=1), blocks[:, 32:].sum(axis=1)], axis=1).reshape(-1)
    return (x, cpu_memory.empty(4)), 1, want


UNWRITTEN_SHARED = r"""
extern "C" __global__ void block_sums(const float* x, float* out) {
    __shared__ float warp_sums[32];
    int t = threadIdx.x, lane = t % 32, warp = t / 32;
    float v = x[blockIdx.x * blockDim.x + t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = warp_sums[lane];  // only blockDim.x / 32 of the 32 slots were written
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v;
    }
}
"""


def _unwritten_shared_case():
    x = _values(192, 4)
    return (x, cpu_memory.empty(3)), 1, x.astype(np.float64).reshape(3, 64).sum(axis=1)


def _fix(code, old, new):
    if old not in code:
        raise AssertionError(f"fix target not found: {old!r}")
    return code.replace(old, new)


BUGS = {b.key: b for b in (
    Bug("shared_word", "every thread adds to one __shared__ word", "racecheck", "block_total", SHARED_WORD,
        _fix(SHARED_WORD, "if (i < n) s += x[i];  // every thread: a read-modify-write of one shared word",
             "if (i < n) atomicAdd(&s, x[i]);  // one atomic update per thread"),
        (4,), (64,), _shared_word_case),
    Bug("grid_total", "every block adds its partial to out[0] in global memory", "racecheck", "grid_total",
        GRID_TOTAL, _fix(GRID_TOTAL, "total[0] += s;  // every block: a plain read-modify-write of one global word",
                         "atomicAdd(total, s);  // blocks run in no fixed order: add atomically"),
        (4,), (64,), _grid_total_case),
    Bug("read_past_end", "a read one past the end of an input array", "memcheck", "differences", READ_PAST_END,
        _fix(READ_PAST_END, "if (i < n) d[i] = x[i + 1] - x[i];  // the last thread reads x[n]",
             "if (i < n - 1) d[i] = x[i + 1] - x[i];"),
        (2,), (64,), _read_past_end_case),
    Bug("write_past_end", "a write one past the end of an output array", "memcheck", "squares", WRITE_PAST_END,
        _fix(WRITE_PAST_END, "if (i <= n) y[i] = (float)i * (float)i;  // i == n writes one past the end",
             "if (i < n) y[i] = (float)i * (float)i;"),
        (2,), (64,), _write_past_end_case),
    Bug("partial_warp", "a full-mask __shfl_xor_sync reduction in a 48-thread block", "synccheck", "warp_sums",
        PARTIAL_WARP,
        _fix(PARTIAL_WARP, "    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);  // lanes 16-31 of warp 1?",
             "    unsigned mask = __activemask();  // the lanes that exist: 16 in the last warp\n"
             "    int lanes = __popc(mask), lane = threadIdx.x % 32;\n"
             "    for (int o = 16; o > 0; o >>= 1) {\n"
             "        float u = __shfl_down_sync(mask, v, o);\n"
             "        if (lane + o < lanes) v += u;  // only from a lane that exists\n"
             "    }"),
        (2,), (48,), _partial_warp_case),
    Bug("unwritten_shared", "threads read __shared__ slots nobody wrote", "initcheck", "block_sums",
        UNWRITTEN_SHARED,
        _fix(UNWRITTEN_SHARED, "v = warp_sums[lane];  // only blockDim.x / 32 of the 32 slots were written",
             "v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0f;  // the written slots only"),
        (3,), (64,), _unwritten_shared_case),
)}

"""The CPU executor runs CUDA C as a GPU would, for correct kernels, and refuses the broken ones
(divergent barriers, deadlocks, bad arguments) with a message instead of a hang or garbage. The
sanitizer's own classes are in test_sanitizer.py."""
import numpy as np
import pytest

from minibn.cuda.executor import (
    CompileError,
    CpuRawKernel,
    CpuRawModule,
    KernelError,
    SanitizerError,
    schedule,
)

BLOCK_SUM = r"""
extern "C" __global__ void block_sum(const float* __restrict__ x, float* out, int n) {
    extern __shared__ __align__(16) float warp_sums[];
    int t = threadIdx.x, lane = t % 32, warp = t / 32;
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += x[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) out[blockIdx.x] = v;
    }
}
"""

TREE = r"""
extern "C" __global__ void tree_sum(const float* x, float* out) {
    __shared__ float s[128];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}
"""

SHUFFLES = r"""
extern "C" __global__ void shuffles(const int* x, int* out) {
    int t = threadIdx.x, v = x[t];
    out[0 * 64 + t] = __shfl_down_sync(0xffffffffu, v, 3);
    out[1 * 64 + t] = __shfl_up_sync(0xffffffffu, v, 2);
    out[2 * 64 + t] = __shfl_xor_sync(0xffffffffu, v, 5);
    out[3 * 64 + t] = __shfl_sync(0xffffffffu, v, 7, 8);
    out[4 * 64 + t] = (int)__ballot_sync(0xffffffffu, v % 3 == 0);
    out[5 * 64 + t] = atomicAdd(&out[6 * 64], 1);
}
"""


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
def test_block_sum_with_shuffles_and_dynamic_shared_memory(order):
    x = np.random.default_rng(0).random(1000, dtype=np.float32)
    out = np.zeros(3, np.float32)
    with schedule(order, seed=5):
        CpuRawKernel(BLOCK_SUM, "block_sum")((3,), (128,), (x, out, np.int32(x.size)), shared_mem=4 * 4)
    owner = (np.arange(x.size) // 128) % 3  # grid-stride: element i belongs to block (i // 128) % 3
    expected = [x[owner == b].sum() for b in range(3)]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(out.sum(), x.sum(), rtol=1e-5)


def test_shuffle_variants_follow_cuda_lane_rules():
    x = np.arange(64, dtype=np.int32) * 10
    out = np.zeros(7 * 64, np.int32)
    CpuRawKernel(SHUFFLES, "shuffles")((1,), (64,), (x, out))
    lane = np.arange(64) % 32
    base = np.arange(64) - lane
    src_down = np.where(lane + 3 < 32, np.arange(64) + 3, np.arange(64))
    src_up = np.where(lane >= 2, np.arange(64) - 2, np.arange(64))
    src_xor = base + (lane ^ 5)
    src_idx = base + (lane - lane % 8) + 7
    np.testing.assert_array_equal(out[:64], x[src_down])
    np.testing.assert_array_equal(out[64:128], x[src_up])
    np.testing.assert_array_equal(out[128:192], x[src_xor])
    np.testing.assert_array_equal(out[192:256], x[src_idx])
    ballot = [sum(1 << k for k in range(32) if x[w * 32 + k] % 3 == 0) for w in (0, 1)]
    np.testing.assert_array_equal(out[256:320].view(np.uint32), np.repeat(np.uint32(ballot), 32))
    assert sorted(out[320:384]) == list(range(64))  # atomics hand out every ticket once
    assert out[384] == 64


def test_tree_is_order_independent_and_missing_syncthreads_is_not():
    x = np.random.default_rng(1).random(256, dtype=np.float32)
    results = {}
    buggy = TREE.replace("s[t] += s[t + stride];\n        __syncthreads();", "s[t] += s[t + stride];")
    assert buggy != TREE
    for name, src in (("good", TREE), ("buggy", buggy)):
        for order in ("forward", "reverse"):
            out = np.zeros(2, np.float32)
            with schedule(order):
                CpuRawKernel(src, "tree_sum")((2,), (128,), (x, out), sanitize=False)
            results[name, order] = out
    expected = x.reshape(2, 128).sum(axis=1)
    np.testing.assert_allclose(results["good", "forward"], expected, rtol=1e-5)
    np.testing.assert_array_equal(results["good", "forward"], results["good", "reverse"])
    # Without the barrier in the loop, thread 0 runs ahead of the others: wrong in forward order,
    # and (here) right in reverse order. Comparing schedules catches it only sometimes; the
    # sanitizer names it in every order.
    assert not np.allclose(results["buggy", "forward"], expected, rtol=1e-3)
    assert not np.array_equal(results["buggy", "forward"], results["buggy", "reverse"])
    for order in ("forward", "reverse"):
        with schedule(order), pytest.raises(SanitizerError, match=r"racecheck: race on s\[\d+\] \(shared memory\)"):
            CpuRawKernel(buggy, "tree_sum")((2,), (128,), (x, np.zeros(2, np.float32)))


def test_shared_memory_starts_poisoned():
    src = r"""
    extern "C" __global__ void read_unwritten(float* out) {
        __shared__ float s[64];
        if (threadIdx.x > 0) s[threadIdx.x] = 1.0f;
        __syncthreads();
        out[threadIdx.x] = s[(threadIdx.x + 63) % 64];
    }"""
    out = np.zeros(64, np.float32)
    CpuRawKernel(src, "read_unwritten")((1,), (64,), (out,), sanitize=False)
    assert np.isnan(out[1]) and np.all(out[2:] == 1.0)
    with pytest.raises(SanitizerError, match=r"initcheck: read of uninitialized s\[0\] .* by thread \(1,0,0\)"):
        CpuRawKernel(src, "read_unwritten")((1,), (64,), (out,))


def test_writing_past_dynamic_shared_memory_is_an_error():
    x = np.ones(128, np.float32)
    args = (x, np.zeros(1, np.float32), np.int32(128))
    with pytest.raises(SanitizerError, match=r"out-of-bounds write of warp_sums\[2\] \(dynamic shared memory\) in "
                       r"block_sum by thread \(64,0,0\).*the launch gave shared_mem=8 bytes"):
        CpuRawKernel(BLOCK_SUM, "block_sum")((1,), (128,), args, shared_mem=8)
    # Without the sanitizer, a guard zone behind the buffer still catches the write afterwards.
    with pytest.raises(KernelError, match=r"wrote byte 8 of dynamic shared memory, past the end of it \(the launch "
                       r"gave shared_mem=8 bytes\)"):
        CpuRawKernel(BLOCK_SUM, "block_sum")((1,), (128,), args, shared_mem=8, sanitize=False)


def test_divergent_syncthreads_is_an_error():
    src = TREE.replace("if (t < stride) s[t] += s[t + stride];\n        __syncthreads();",
                       "if (t < stride) { s[t] += s[t + stride]; __syncthreads(); }")
    with pytest.raises(KernelError, match="divergent __syncthreads"):
        CpuRawKernel(src, "tree_sum")((1,), (128,), (np.ones(128, np.float32), np.zeros(1, np.float32)))


def test_early_return_before_a_barrier_is_an_error():
    src = TREE.replace("int t = threadIdx.x;", "int t = threadIdx.x; if (t >= 100) return;")
    with pytest.raises(KernelError, match="exited after 0 barrier"):
        CpuRawKernel(src, "tree_sum")((1,), (128,), (np.ones(128, np.float32), np.zeros(1, np.float32)))


def test_deadlock_is_an_error_not_a_hang():
    src = r"""
    extern "C" __global__ void stuck(float* out) {
        if (threadIdx.x % 32 < 16) __syncwarp(); else __syncthreads();
        out[threadIdx.x] = 1.0f;
    }"""
    with pytest.raises(KernelError, match="deadlock in block"):
        CpuRawKernel(src, "stuck")((1,), (64,), (np.zeros(64, np.float32),))


def test_shuffle_with_an_exited_lane_is_an_error():
    src = r"""
    extern "C" __global__ void half_warp(float* out) {
        if (threadIdx.x % 32 >= 16) return;
        out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
    }"""
    with pytest.raises(KernelError, match="already exited"):
        CpuRawKernel(src, "half_warp")((1,), (32,), (np.zeros(32, np.float32),))


def test_spinning_on_another_block_times_out_instead_of_hanging(monkeypatch):
    # Block 0 waits for block 1's flag: fine on a GPU that runs both at once, a hang when blocks run
    # one after another. The watchdog stops it after MINIBN_SHIM_TIMEOUT seconds of CPU time.
    src = r"""
    extern "C" __global__ void wait_for_neighbour(volatile int* flag) {
        if (blockIdx.x == 0) { while (flag[0] == 0) { } }
        else flag[0] = 1;
    }"""
    monkeypatch.setenv("MINIBN_SHIM_TIMEOUT", "0.5")
    with schedule("forward"), pytest.raises(KernelError, match="still running after 0.5 s of CPU time"):
        CpuRawKernel(src, "wait_for_neighbour")((2,), (1,), (np.zeros(1, np.int32),))
    with schedule("reverse"):  # block 1 first: the flag is already set
        CpuRawKernel(src, "wait_for_neighbour")((2,), (1,), (np.zeros(1, np.int32),), sanitize=False)
        # A plain (volatile) flag between blocks, with no atomic and no fence, is a race.
        with pytest.raises(SanitizerError, match=r"race on flag\[0\] \(global memory\).*different blocks"):
            CpuRawKernel(src, "wait_for_neighbour")((2,), (1,), (np.zeros(1, np.int32),))


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.ones(4, np.float64), np.zeros(1, np.float32), np.int32(4)), "reads float32 values"),
        ((np.ones(4, np.float32), np.zeros(1, np.float32), 4.0), "not a Python float|pass np.int32"),
        ((np.ones(4, np.float32), np.zeros(1, np.float32)), "takes 3 arguments"),
        ((np.ones(8, np.float32)[::2], np.zeros(1, np.float32), np.int32(4)), "C-contiguous"),
        ((np.ones(4, np.float32), np.zeros(1, np.float32), np.int64(4)), r"pass np.int32"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(KernelError, match=message):
        CpuRawKernel(BLOCK_SUM, "block_sum")((1,), (32,), args, shared_mem=4)


def test_launch_limits_are_cuda_limits():
    k = CpuRawKernel(BLOCK_SUM, "block_sum")
    args = (np.ones(4, np.float32), np.zeros(1, np.float32), np.int32(4))
    with pytest.raises(KernelError, match="more than 1024 threads"):
        k((1,), (64, 32), args)
    with pytest.raises(KernelError, match="dynamic shared memory"):
        k((1,), (32,), args, shared_mem=64 * 1024)
    with pytest.raises(KernelError, match="no __global__ kernel named 'nope'"):
        CpuRawKernel(BLOCK_SUM, "nope")


def test_compile_errors_name_the_source_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBN_CACHE_DIR", str(tmp_path))
    src = 'extern "C" __global__ void bad(float* out) {\n    out[0] = undeclared;\n}\n'
    with pytest.raises(CompileError, match=r"mine\.cu:2.*undeclared"):
        CpuRawModule(src, label="mine.cu").compile()


def test_compiled_kernels_are_cached_in_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIBN_CACHE_DIR", str(tmp_path))
    src = 'extern "C" __global__ void fill(float* out, float v) { out[threadIdx.x] = v; }\n'
    CpuRawModule(src).compile()
    built = list(tmp_path.glob("*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    out = np.zeros(32, np.float32)
    CpuRawModule(src).get_function("fill")((1,), (32,), (out, np.float32(2.5)))
    assert list(tmp_path.glob("*.so")) == built and built[0].stat().st_mtime_ns == stamp
    assert np.all(out == 2.5)

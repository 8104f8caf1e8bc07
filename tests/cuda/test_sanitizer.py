"""The CPU executor's sanitizer, through the public CpuRawKernel API: each of the six classic GPU
bugs is named (tool, array and index, kernel, thread, line) and its fixed twin runs clean and
right; the verdict does not depend on the schedule; legal synchronization (the last-block ticket,
__syncwarp, __activemask) stays legal and its broken variants are told apart."""
import numpy as np
import pytest

from minibn.cuda import cpu_memory
from minibn.cuda.bug_classes import BUGS
from minibn.cuda.executor import CpuRawKernel, KernelError, SanitizerError, sanitize, schedule

# What each buggy kernel's report must name, beyond its tool.
NAMED = {
    "shared_word": ["race on s (shared memory) in block_total", "kernel.cu:7", "atomicAdd"],
    "grid_total": ["race on total[0] (global memory) in grid_total", "of block (", "different blocks",
                   "kernel.cu:13"],
    "read_past_end": ["out-of-bounds read of x[100]", "x has 100 elements: index 100 is one past the end",
                      "thread (35,0,0) of block (1,0,0)", "kernel.cu:5"],
    "write_past_end": ["out-of-bounds write of y[100]", "one past the end", "kernel.cu:4"],
    "partial_warp": ["in warp_sums: __shfl_xor_sync at kernel.cu:4, thread 32 of block (0,0,0)",
                     "names lanes 16-31 of warp 1, which do not exist", "block of 48 threads"],
    "unwritten_shared": ["read of uninitialized warp_sums[2] (shared memory) in block_sums", "kernel.cu:10",
                         "identity"],
}


@pytest.mark.parametrize("key", list(BUGS))
def test_each_bug_class_is_named_and_its_fixed_twin_is_clean(key):
    bug = BUGS[key]
    with pytest.raises(SanitizerError) as info:
        bug.run("buggy")
    assert info.value.tool == bug.tool
    message = str(info.value)
    assert message.startswith(bug.tool + ": ")
    for phrase in NAMED[key]:
        assert phrase in message, message
    got, want = bug.run("fixed")
    np.testing.assert_allclose(got, want, rtol=bug.rtol)


@pytest.mark.parametrize("key", ["shared_word", "grid_total", "read_past_end", "write_past_end"])
def test_without_the_sanitizer_these_bugs_pass_silently(key):
    # Why the sanitizer exists: fibers run one at a time, so lost updates never happen here, and an
    # access just past an array lands in memory that is there. The numbers look right.
    got, want = BUGS[key].run("buggy", sanitize=False)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("key", list(BUGS))
def test_the_verdict_does_not_depend_on_the_schedule(key):
    tools = set()
    for order, seed in (("reverse", 0), ("shuffle", 11)):
        with schedule(order, seed), pytest.raises(SanitizerError) as info:
            BUGS[key].run("buggy")
        tools.add(info.value.tool)
    assert tools == {BUGS[key].tool}


TICKET = r"""
extern "C" __global__ void ticket_sum(const float* x, float* partial, unsigned* counter, float* total, int n) {
    __shared__ int is_last;
    int t = threadIdx.x;
    if (t == 0) {
        float s = 0.0f;
        for (int i = blockIdx.x * blockDim.x; i < (blockIdx.x + 1) * blockDim.x && i < n; ++i) s += x[i];
        partial[blockIdx.x] = s;
        __threadfence();
        is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
        if (is_last) __threadfence();
    }
    __syncthreads();
    if (is_last && t < 32) {
        float s = 0.0f;
        for (int k = t; k < gridDim.x; k += 32) s += partial[k];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (t == 0) {
            total[0] = s;
            counter[0] = 0u;
        }
    }
}
"""


def _ticket(code, order="forward"):
    x = cpu_memory.to_device(np.arange(300, dtype=np.float32))
    partial, counter, total = cpu_memory.empty(5), cpu_memory.zeros(1, np.uint32), cpu_memory.empty(1)
    with schedule(order, 5):
        CpuRawKernel(code, "ticket_sum")((5,), (64,), (x, partial, counter, total, np.int32(300)))
    return total[0], counter[0]


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffle"])
def test_the_last_block_ticket_with_both_fences_is_legal(order):
    total, counter = _ticket(TICKET, order)
    assert total == np.arange(300).sum() and counter == 0  # the reset of the counter is legal too


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_a_ticket_without_the_reader_fence_is_a_race_and_says_so(order):
    code = TICKET.replace("if (is_last) __threadfence();", "")
    with pytest.raises(SanitizerError, match="race on partial") as info:
        _ticket(code, order)
    assert "no __threadfence() follows that atomic in the reading thread" in str(info.value)


def test_a_ticket_without_the_writer_fence_is_a_race_and_says_so():
    code = TICKET.replace("        __threadfence();\n        is_last", "        is_last")
    with pytest.raises(SanitizerError, match="with no __threadfence\\(\\) between this write and the atomic"):
        _ticket(code)


WARP_SHARED = r"""
extern "C" __global__ void warp_shared(const float* x, float* out) {
    __shared__ float s[64];
    int t = threadIdx.x;
    s[t] = x[t];
    __syncwarp();
    if (t % 32 < 16) s[t] += s[t + 16];
    __syncwarp();
    if (t % 32 == 0) out[t / 32] = s[t];
}
"""


def test_syncwarp_orders_the_lanes_of_a_warp_and_its_absence_is_a_race():
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(2, np.float32)
    CpuRawKernel(WARP_SHARED, "warp_shared")((1,), (64,), (x, out))
    np.testing.assert_array_equal(out, [0 + 16, 32 + 48])
    racy = WARP_SHARED.replace("    s[t] = x[t];\n    __syncwarp();", "    s[t] = x[t];")
    for order in ("forward", "reverse"):
        with schedule(order), pytest.raises(SanitizerError) as info:
            CpuRawKernel(racy, "warp_shared")((1,), (64,), (x, out))
        assert info.value.tool == "racecheck" and "lanes of one warp" in str(info.value)


def test_activemask_returns_the_lanes_that_arrive_together():
    src = r"""
    extern "C" __global__ void masks(unsigned* out) {
        int t = threadIdx.x;
        unsigned all = __activemask();
        unsigned some = 0;
        if (t % 3 == 0) some = __activemask();
        out[t] = all;
        out[64 + t] = some;
    }"""
    out = np.zeros(128, np.uint32)
    CpuRawKernel(src, "masks")((1,), (48,), (out,))
    assert set(out[:32]) == {0xFFFFFFFF} and set(out[32:48]) == {0xFFFF}  # 48 threads: 16 in warp 1
    every_third = sum(1 << k for k in range(0, 32, 3))
    assert out[64] == every_third and out[64 + 33] == sum(1 << (t - 32) for t in range(33, 48, 3))
    assert out[64 + 1] == 0


def test_syncthreads_on_different_lines_is_divergent():
    src = r"""
    extern "C" __global__ void two_barriers(float* out) {
        __shared__ float s[64];
        if (threadIdx.x < 32) { s[threadIdx.x] = 1.0f; __syncthreads(); }
        else { s[threadIdx.x] = 2.0f; __syncthreads(); }
        out[threadIdx.x] = s[63 - threadIdx.x];
    }"""
    with pytest.raises(SanitizerError, match=r"synccheck: .*thread 0 waits at the one at kernel.cu:4, thread 32 "
                                             r"at the one at kernel.cu:5"):
        CpuRawKernel(src, "two_barriers")((1,), (64,), (np.zeros(64, np.float32),))


def test_a_shuffle_whose_lanes_wait_elsewhere_is_named():
    src = r"""
    extern "C" __global__ void half_shuffle(float* out) {
        float v = threadIdx.x;
        if (threadIdx.x % 32 < 8) v = __shfl_down_sync(0xffffffffu, v, 1);
        __syncthreads();
        out[threadIdx.x] = v;
    }"""
    with pytest.raises(SanitizerError, match=r"waits at __shfl_down_sync \(kernel.cu:4\) with mask 0xffffffff, but "
                                             r"lane 8 of its warp \(thread 8\) is waiting at __syncthreads\(\)"):
        CpuRawKernel(src, "half_shuffle")((1,), (32,), (np.zeros(32, np.float32),))


ACCUMULATE = r"""
extern "C" __global__ void accumulate(const float* x, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] += x[i];
}
"""


def test_initcheck_follows_how_global_memory_was_allocated():
    x = cpu_memory.to_device(np.ones(64, np.float32))
    with pytest.raises(SanitizerError, match=r"initcheck: read of uninitialized out\[0\] \(global memory\).*like "
                                             r"cupy.empty.*allocate it with zeros"):
        CpuRawKernel(ACCUMULATE, "accumulate")((1,), (64,), (x, cpu_memory.empty(64), np.int32(64)))
    out = cpu_memory.zeros(64)
    CpuRawKernel(ACCUMULATE, "accumulate")((1,), (64,), (x, out, np.int32(64)))
    np.testing.assert_array_equal(out, 1.0)
    fresh = cpu_memory.empty(64)
    CpuRawKernel(r"""extern "C" __global__ void fill(float* y) { y[threadIdx.x] = 2.0f; }""", "fill")(
        (1,), (64,), (fresh,))
    CpuRawKernel(ACCUMULATE, "accumulate")((1,), (64,), (x, fresh, np.int32(64)))  # written by a kernel first
    np.testing.assert_array_equal(fresh, 3.0)


def test_an_atomic_on_a_shared_accumulator_nobody_zeroed_is_uninitialized():
    src = r"""
    extern "C" __global__ void count_odd(const int* x, int* out) {
        __shared__ int n;
        if (x[threadIdx.x] % 2) atomicAdd(&n, 1);
        __syncthreads();
        if (threadIdx.x == 0) out[0] = n;
    }"""
    with pytest.raises(SanitizerError, match=r"initcheck: atomic update of uninitialized n \(shared memory\).*zero it"):
        CpuRawKernel(src, "count_odd")((1,), (32,), (np.arange(32, dtype=np.int32), np.zeros(1, np.int32)))


def test_dynamic_shared_memory_has_bounds():
    src = r"""
    extern "C" __global__ void stage(const float* x, float* out) {
        extern __shared__ float buf[];
        buf[threadIdx.x] = x[threadIdx.x];
        __syncthreads();
        out[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
    }"""
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    CpuRawKernel(src, "stage")((1,), (64,), (x, out), shared_mem=64 * 4)
    np.testing.assert_array_equal(out, x[::-1])
    with pytest.raises(SanitizerError, match=r"out-of-bounds write of buf\[32\] \(dynamic shared memory\).*"
                                             r"shared_mem=128 bytes, 32 elements of 4 bytes"):
        CpuRawKernel(src, "stage")((1,), (64,), (x, out), shared_mem=32 * 4)


def test_a_wide_load_straddling_the_end_is_out_of_bounds():
    src = r"""
    extern "C" __global__ void sum4(const float* x, float* out, int n4) {
        int i = threadIdx.x;
        if (i <= n4) { float4 v = reinterpret_cast<const float4*>(x)[i]; out[i] = v.x + v.y + v.z + v.w; }
    }"""
    x = cpu_memory.to_device(np.ones(16, np.float32))
    with pytest.raises(SanitizerError, match=r"out-of-bounds read of x\[16\]"):
        CpuRawKernel(src, "sum4")((1,), (32,), (x, cpu_memory.zeros(8), np.int32(4)))


def test_more_hazards_are_counted_and_the_switch_turns_checking_off():
    bug = BUGS["shared_word"]
    with pytest.raises(SanitizerError) as info:
        bug.run("buggy")
    assert info.value.counts["racecheck"] > 100 and "more hazards in this launch" in str(info.value)
    with sanitize(False):
        bug.run("buggy")  # the context manager
    with sanitize(False), pytest.raises(SanitizerError):
        bug.run("buggy", sanitize=True)  # a call's own argument wins


def test_always_on_checks_stay_on_without_the_sanitizer():
    src = r"""
    extern "C" __global__ void early_exit(float* out) {
        if (threadIdx.x >= 16) return;
        __syncthreads();
        out[threadIdx.x] = 1.0f;
    }"""
    with pytest.raises(KernelError, match="exited after 0 barrier"):
        CpuRawKernel(src, "early_exit")((1,), (32,), (np.zeros(32, np.float32),), sanitize=False)

"""The lesson-06 checks pass the course's kernels and reject known-buggy ones with the right hint;
the six classic GPU bugs each get the sanitizer's verdict through the checks."""
import pytest

from minibn.checks import gpu_kernels as checks
from minibn.cuda.sources import inline_includes, source

K0 = source("k0_thread_per_channel")
K1 = source("k1_block_tree")
K2 = source("k2_welford_warp")
K3 = source("k3_grid_split")
K6 = source("k6_backward")

# Learners' answers to the exercises as the lesson's solution writes them (the course's own
# kernel files call shared helpers, which are less convenient to plant bugs in).
K3_FINALIZE = inline_includes(r"""
#include "welford.cuh"

extern "C" __global__ void bn_stats_k3_finalize(const float* __restrict__ partial, float* __restrict__ mean,
                                                float* __restrict__ var, int C, int S) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    Welford w = {0.0f, 0.0f, 0.0f};
    for (int s = 0; s < S; ++s) {
        const float* p = partial + ((long long)c * S + s) * 3;
        Welford o = {p[0], p[1], p[2]};
        w = welford_merge(w, o);
    }
    mean[c] = w.mean;
    var[c] = w.m2 / w.n;
}
""", "k3_finalize.cu")
BWD = r"""
extern "C" __global__ void bn_bwd_elemt(const float* __restrict__ dy, const float* __restrict__ x,
                                        const float* __restrict__ mean, const float* __restrict__ invstd,
                                        const float* __restrict__ gamma, const float* __restrict__ dgamma,
                                        const float* __restrict__ dbeta, float* __restrict__ dx,
                                        int N, int C, int HW) {
    int row = blockIdx.y, c = row % C;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= HW) return;
    float inv_m = 1.0f / (float)((long long)N * HW);
    long long o = (long long)row * HW + i;
    float xhat = (x[o] - mean[c]) * invstd[c];
    dx[o] = gamma[c] * invstd[c] * (dy[o] - dbeta[c] * inv_m - xhat * dgamma[c] * inv_m);
}
"""
RACY = checks.RACY_CHANNEL_SUMS
_BARRIER = RACY.replace("    if (lane == 0) warp_sums[warp] = v;\n",
                        "    if (lane == 0) warp_sums[warp] = v;\n    __syncthreads();\n")
_ATOMIC = _BARRIER.replace("sums[c] += total;", "atomicAdd(&sums[c], total);")
SUMS_FIXED = _ATOMIC.replace(
    "    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);",
    """    unsigned mask = __activemask();  // the lanes that exist (16 in the last warp of 48 threads)
    int lanes = __popc(mask);
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_down_sync(mask, v, offset);
        if (lane + offset < lanes) v += other;
    }""")


def _mutate(code, old, new, count=-1):
    assert old in code, f"mutation target {old!r} not found"
    return code.replace(old, new, count)


def _check_of(kernel):
    return {
        "k0": checks.check_thread_per_channel,
        "k1": checks.check_block_tree,
        "k2": checks.check_welford_warp,
        "k3": checks.check_grid_finalize,
        "bwd": checks.check_backward_elementwise,
        "sums": checks.check_channel_sums,
    }[kernel]


@pytest.mark.parametrize(
    "check, code",
    [
        (checks.check_thread_per_channel, K0),
        (checks.check_block_tree, K1),
        (checks.check_welford_warp, K2),
        (checks.check_backward_elementwise, K6),
        (checks.check_grid_finalize, K3),
        (checks.check_grid_finalize, K3_FINALIZE),
        (checks.check_grid_finalize_randomized, K3),
        (checks.check_backward_elementwise, BWD),
        (checks.check_channel_sums, SUMS_FIXED),
        (checks.check_channel_sums_randomized, SUMS_FIXED),
        (checks.check_thread_per_channel_randomized, K0),
        (checks.check_block_tree_randomized, K1),
        (checks.check_welford_warp_randomized, K2),
        (checks.check_backward_elementwise_randomized, K6),
    ],
)
def test_reference_kernels_pass(check, code, capfd):
    assert check(lambda: code) is None
    assert capfd.readouterr().err == ""


BUGGY = {
    "k0 unbiased variance": ("k0", _mutate(K0, "var[c] = sq / m;", "var[c] = sq / (m - 1.0f);"), "m - 1"),
    "k0 CNHW index": ("k0", _mutate(K0, "((long long)n * C + c) * HW", "((long long)c * N + n) * HW"),
                      "treats x as (C, N, H, W)"),
    "k0 channel ignored": ("k0", _mutate(K0, "((long long)n * C + c) * HW", "((long long)n) * HW"),
                           "ignores the channel"),
    "k0 E[x^2]": ("k0", _mutate(K0, "float d = x[((long long)n * C + c) * HW + i] - mu;",
                                "float d = x[((long long)n * C + c) * HW + i];"), "E[x^2]"),
    "k0 std for var": ("k0", _mutate(K0, "var[c] = sq / m;", "var[c] = sqrtf(sq / m);"), "standard deviation"),
    "k1 missing __syncthreads in the tree": (
        "k1", _mutate(K1, "            s_sq[t] += s_sq[t + stride];\n        }\n        __syncthreads();",
                      "            s_sq[t] += s_sq[t + stride];\n        }"), "racecheck: race on smem["),
    "k1 missing __syncthreads after the fill": (
        "k1", _mutate(K1, "    s_sq[t] = sq;\n    __syncthreads();", "    s_sq[t] = sq;"), "racecheck: race on smem["),
    "k1 __syncthreads inside the branch": (
        "k1", _mutate(K1, "            s_sq[t] += s_sq[t + stride];\n        }\n        __syncthreads();",
                      "            s_sq[t] += s_sq[t + stride];\n            __syncthreads();\n        }"),
        "every thread of the block must reach every __syncthreads()"),
    "k2 missing __syncthreads between warps": (
        "k2", _mutate(K2, "    if (lane == 0) warp_totals[warp] = w;\n    __syncthreads();",
                      "    if (lane == 0) warp_totals[warp] = w;"), "racecheck: race on warp_totals["),
    "k2 one-pass sums instead of Welford": (
        "k2", _mutate(K1, "extern __shared__ float smem[];", "__shared__ float smem[2 * 1024];").replace(
            "bn_stats_k1", "bn_stats_k2"), "Welford"),
    "k2 launch-time shared memory it is not given": ("k2", K1.replace("bn_stats_k1", "bn_stats_k2"),
                                                      "out-of-bounds write of smem[0] (dynamic shared memory)"),
    "k3 unweighted means": ("k3", _mutate(K3_FINALIZE, "    Welford w = {0.0f, 0.0f, 0.0f};\n    for (int s = 0; s < S; ++s) {",
                                          "    Welford w = {0.0f, 0.0f, 0.0f};\n    float msum = 0.0f; int used = 0;\n"
                                          "    for (int s = 0; s < S; ++s) {\n"
                                          "        if (partial[((long long)c * S + s) * 3] > 0.0f) { msum += partial[((long long)c * S + s) * 3 + 1]; used++; }")
                            .replace("    mean[c] = w.mean;\n    var[c] = w.m2 / w.n;\n}\n",
                                     "    mean[c] = msum / used;\n    var[c] = w.m2 / w.n;\n}\n"), "without weights"),
    "k3 no delta term": ("k3", _mutate(K3, "r.m2 = a.m2 + b.m2 + d * d * a.n * fb;", "r.m2 = a.m2 + b.m2;"),
                         "spread between the slices' means"),
    # Merging per-slice variances (M2 / n, times n) with no guard: 0 / 0 for an empty slice.
    "k3 empty slice divides by zero": ("k3", _mutate(_mutate(K3_FINALIZE, "Welford o = {p[0], p[1], p[2]};",
                                                             "Welford o = {p[0], p[1], p[2] / p[0] * p[0]};"),
                                                     "    if (b.n == 0.0f) return a;\n", ""),
                                       "skip an empty slice"),
    "bwd frozen statistics": ("bwd", _mutate(BWD, "dy[o] - dbeta[c] * inv_m - xhat * dgamma[c] * inv_m", "dy[o]"),
                              "ignores the paths through the batch mean"),
    "bwd no mean term": ("bwd", _mutate(BWD, "dy[o] - dbeta[c] * inv_m - xhat", "dy[o] - xhat"), "-dbeta / m term"),
    "bwd no variance term": ("bwd", _mutate(BWD, " - xhat * dgamma[c] * inv_m);", ");"), "-x_hat * dgamma / m"),
    "bwd no gamma": ("bwd", _mutate(BWD, "dx[o] = gamma[c] * invstd[c] *", "dx[o] = invstd[c] *"), "factor gamma"),
    "bwd sums not divided by m": ("bwd", _mutate(BWD, "float inv_m = 1.0f / (float)((long long)N * HW);",
                                                 "float inv_m = 1.0f;"), "divide them by m"),
    "bwd wrong channel": ("bwd", _mutate(BWD, "int row = blockIdx.y, c = row % C;",
                                         "int row = blockIdx.y, c = row / (N * C);"), "dx is wrong at index"),
    "bwd reads an output before writing it": (
        "bwd", _mutate(BWD, "dx[o] = gamma[c]", "dx[o] += gamma[c]"),
        "initcheck: read of uninitialized dx[0] (global memory)"),
    # The racy kernel of the lesson's exercise, and each stage of fixing it.
    "sums as handed out": ("sums", RACY, "racecheck: race on warp_sums[1] (shared memory)"),
    "sums with the barrier only": ("sums", _BARRIER, "racecheck: race on sums[0] (global memory)"),
    "sums with atomicAdd, full-mask shuffle": ("sums", _ATOMIC, "names lanes 16-31 of warp 1, which do not exist"),
    "sums adding an undefined lane's value": (
        "sums", _ATOMIC.replace("__shfl_down_sync(0xffffffffu, v, offset)", "__shfl_down_sync(__activemask(), v, offset)"),
        "shuffled from a lane that does not exist"),
}

# The six classic GPU bugs, judged through the lesson's checks (tests/cuda/test_sanitizer.py has
# them as standalone kernels through CpuRawKernel). The fixed twin of each passes: the reference
# kernel (test_reference_kernels_pass) or the exercise's fix.
SIX_CLASSES = {
    "every thread adds to one __shared__ word": (
        "k1", _mutate(K1, """    s_sum[t] = sum;
    s_sq[t] = sq;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            s_sum[t] += s_sum[t + stride];
            s_sq[t] += s_sq[t + stride];
        }
        __syncthreads();
    }""", """    if (t == 0) { s_sum[0] = 0.0f; s_sq[0] = 0.0f; }
    __syncthreads();
    s_sum[0] += sum;
    s_sq[0] += sq;
    __syncthreads();"""), "racecheck", "race on smem[0] (dynamic shared memory)"),
    "every block adds to one global word": ("sums", _BARRIER, "racecheck", "race on sums[0] (global memory)"),
    "a read one past the end of an input": (
        "k0", _mutate(K0, "for (int i = 0; i < HW; ++i) sum +=", "for (int i = 0; i <= HW; ++i) sum +="),
        "memcheck", "out-of-bounds read of x["),
    "a write one past the end of an output": (
        "bwd", _mutate(BWD, "    if (i >= HW) return;", "    if (i > HW) return;"), "memcheck",
        "one past the end"),
    "a full-mask shuffle in a 48-thread block": ("sums", _ATOMIC, "synccheck", "__shfl_down_sync at your_kernel.cu:"),
    "reading __shared__ slots nobody wrote": (
        "k2", _mutate(K2, "w = lane < warps ? warp_totals[lane] : zero;", "w = warp_totals[lane];"),
        "initcheck", "read of uninitialized warp_totals[2] (shared memory)"),
}


@pytest.mark.parametrize("name", list(SIX_CLASSES))
def test_the_six_bug_classes_get_the_sanitizers_verdict_through_the_checks(name, capfd, monkeypatch):
    monkeypatch.setenv("MINIBN_KERNEL_DEVICE", "cpu")
    kernel, code, tool, phrase = SIX_CLASSES[name]
    with pytest.raises(AssertionError) as info:
        _check_of(kernel)(lambda: code)
    message = str(info.value)
    assert f"{tool}: " in message and phrase in message and f"Hint ({tool})" in message, message
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("name", list(BUGGY))
def test_buggy_kernel_is_rejected_with_its_hint(name, capfd, monkeypatch):
    # The CPU executor even on a GPU machine: races are caught by comparing two schedules, which
    # a GPU cannot be made to replay.
    monkeypatch.setenv("MINIBN_KERNEL_DEVICE", "cpu")
    kernel, code, hint = BUGGY[name]
    with pytest.raises(AssertionError, match=None) as info:
        _check_of(kernel)(lambda: code)
    assert hint in str(info.value), str(info.value)
    assert capfd.readouterr().err == ""


def test_not_a_string_or_wrong_kernel_name():
    with pytest.raises(AssertionError, match="as a str"):
        checks.check_thread_per_channel(lambda: None)
    with pytest.raises(AssertionError, match="bn_stats_k0"):
        checks.check_thread_per_channel(lambda: K1)
    with pytest.raises(AssertionError, match='declare the kernel as extern "C"'):
        checks.check_thread_per_channel(lambda: K0.replace('extern "C" ', ""))
    with pytest.raises(AssertionError, match="must be a function"):
        checks.check_thread_per_channel(K0)


def test_compile_errors_reach_the_learner():
    code = _mutate(K0, "float mu = sum / m;", "float mu = total / m;")
    line = code.splitlines().index("    float mu = total / m;") + 1
    with pytest.raises(AssertionError, match=rf"(?s)does not compile \(your_kernel.cu\).*your_kernel.cu:{line}.*total"):
        checks.check_thread_per_channel(lambda: code)


def test_includes_of_unknown_headers_are_named():
    with pytest.raises(AssertionError, match="headers available are .*welford.cuh"):
        checks.check_welford_warp(lambda: '#include "cub/cub.cuh"\n' + K2)


def test_randomized_cases_follow_the_seed():
    bad = BUGGY["k0 unbiased variance"][1]
    messages = []
    for _ in range(2):
        with pytest.raises(AssertionError) as info:
            checks.check_thread_per_channel_randomized(lambda: bad, seed=123)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "randomized case" in messages[0]

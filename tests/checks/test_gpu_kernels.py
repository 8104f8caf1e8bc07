"""The lesson-06 checks pass the course's kernels and reject known-buggy ones with the right hint."""
import pytest

from minibn.checks import gpu_kernels as checks
from minibn.cuda.sources import source

K0 = source("k0_thread_per_channel")
K1 = source("k1_block_tree")
K2 = source("k2_welford_warp")
K3 = source("k3_grid_split")
K6 = source("k6_backward")


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
    }[kernel]


@pytest.mark.parametrize(
    "check, code",
    [
        (checks.check_thread_per_channel, K0),
        (checks.check_block_tree, K1),
        (checks.check_welford_warp, K2),
        (checks.check_backward_elementwise, K6),
        (checks.check_grid_finalize, K3),
        (checks.check_grid_finalize_randomized, K3),
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
    "k0 unbiased variance": ("k0", _mutate(K0, "sq / (float)(N * HW)", "sq / (float)(N * HW - 1)"), "m - 1"),
    "k0 CNHW index": ("k0", _mutate(K0, "((long long)n * C + c) * HW", "((long long)c * N + n) * HW"),
                      "treats x as (C, N, H, W)"),
    "k0 channel ignored": ("k0", _mutate(K0, "((long long)n * C + c) * HW", "((long long)n) * HW"),
                           "ignores the channel"),
    "k0 E[x^2]": ("k0", _mutate(K0, "float d = x[((long long)n * C + c) * HW + i] - mu;",
                                "float d = x[((long long)n * C + c) * HW + i];"), "E[x^2]"),
    "k0 std for var": ("k0", _mutate(K0, "var[c] = sq / (float)(N * HW);", "var[c] = sqrtf(sq / (float)(N * HW));"),
                       "standard deviation"),
    "k1 missing __syncthreads in the tree": (
        "k1", _mutate(K1, "            s_sq[t] += s_sq[t + stride];\n        }\n        __syncthreads();",
                      "            s_sq[t] += s_sq[t + stride];\n        }"), "without a __syncthreads()"),
    "k1 missing __syncthreads after the fill": (
        "k1", _mutate(K1, "    s_sq[t] = sq;\n    __syncthreads();", "    s_sq[t] = sq;"), "different order"),
    "k1 __syncthreads inside the branch": (
        "k1", _mutate(K1, "            s_sq[t] += s_sq[t + stride];\n        }\n        __syncthreads();",
                      "            s_sq[t] += s_sq[t + stride];\n            __syncthreads();\n        }"),
        "every thread of the block must reach every __syncthreads()"),
    "k2 missing __syncthreads between warps": (
        "k2", _mutate(K2, "    if (lane == 0) warp_totals[warp] = w;\n    __syncthreads();",
                      "    if (lane == 0) warp_totals[warp] = w;"), "different order"),
    "k2 one-pass sums instead of Welford": (
        "k2", _mutate(K1, "extern __shared__ float smem[];", "__shared__ float smem[2 * 1024];").replace(
            "bn_stats_k1", "bn_stats_k2"), "Welford"),
    "k2 launch-time shared memory it is not given": ("k2", K1.replace("bn_stats_k1", "bn_stats_k2"),
                                                      "past the end of it"),
    "k3 unweighted means": ("k3", _mutate(K3, "    Welford w = {0.0f, 0.0f, 0.0f};\n    for (int s = 0; s < S; ++s) {",
                                          "    Welford w = {0.0f, 0.0f, 0.0f};\n    float msum = 0.0f; int used = 0;\n"
                                          "    for (int s = 0; s < S; ++s) {\n"
                                          "        if (partial[((long long)c * S + s) * 3] > 0.0f) { msum += partial[((long long)c * S + s) * 3 + 1]; used++; }")
                            .replace("    mean[c] = w.mean;\n    var[c] = w.m2 / w.n;\n}\n",
                                     "    mean[c] = msum / used;\n    var[c] = w.m2 / w.n;\n}\n"), "without weights"),
    "k3 no delta term": ("k3", _mutate(K3, "r.m2 = a.m2 + b.m2 + d * d * a.n * fb;", "r.m2 = a.m2 + b.m2;"),
                         "spread between the slices' means"),
    # Merging per-slice variances (M2 / n, times n) with no guard: 0 / 0 for an empty slice.
    "k3 empty slice divides by zero": ("k3", _mutate(_mutate(K3, "Welford o = {p[0], p[1], p[2]};",
                                                             "Welford o = {p[0], p[1], p[2] / p[0] * p[0]};"),
                                                     "    if (b.n == 0.0f) return a;\n", ""),
                                       "skip an empty slice"),
    "bwd frozen statistics": ("bwd", _mutate(K6, "dy[base + i] - mean_dy - xhat * mean_dy_xhat", "dy[base + i]"),
                              "ignores the paths through the batch mean"),
    "bwd no mean term": ("bwd", _mutate(K6, "dy[base + i] - mean_dy - xhat", "dy[base + i] - xhat"),
                         "-dbeta / m term"),
    "bwd no variance term": ("bwd", _mutate(K6, " - xhat * mean_dy_xhat);", ");"), "-x_hat * dgamma / m"),
    "bwd no gamma": ("bwd", _mutate(K6, "float k = gamma[c] * invstd[c]", "float k = invstd[c]"), "factor gamma"),
    "bwd sums not divided by m": ("bwd", _mutate(K6, "float inv_m = 1.0f / (float)((long long)N * HW);",
                                                 "float inv_m = 1.0f;"), "divide them by m"),
    "bwd wrong channel": ("bwd", _mutate(K6, "int c = row % C;", "int c = row / (N * C);"), "dx is wrong at index"),
}


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
    code = _mutate(K0, "float mu = sum / (float)(N * HW);", "float mu = total / (float)(N * HW);")
    with pytest.raises(AssertionError, match=r"(?s)does not compile \(your_kernel.cu\).*your_kernel.cu:13.*total"):
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

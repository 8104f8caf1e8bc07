"""Every CUDA C step of the progression (from STEPS), on awkward shapes, under two schedule orders
and the sanitizer, against the float64 reference: right answers, the same bits whichever order
the threads run in, and no race, out-of-bounds or uninitialized access, or misused barrier."""
import numpy as np
import pytest

from minibn import functional as ref
from minibn.cuda import progression as P
from minibn.cuda.device import H100_SM_COUNT
from minibn.cuda.executor import SanitizerError, sanitize, schedule
from minibn.cuda.sources import source

STAT_STEPS = [s.key for s in P.STEPS if "stats" in s.modes]
ORDERS = [("forward", 0), ("shuffle", 7)]

# (shape, mean offset): N*H*W not a multiple of 32, H*W smaller than the block, C = 1, H*W a
# multiple of 4 (float4 path) with several blocks per channel and not, 2-D input, a mean far from 0.
SHAPES = [
    ((3, 5, 7, 9), 0.0),
    ((2, 3, 2, 2), 1.0),
    ((4, 1, 8, 8), -2.0),
    ((16, 3), 0.5),
    ((5, 2, 6, 6), 300.0),
]


def test_steps_table_lists_every_kernel_and_the_steps_that_launch_them():
    assert [s.key for s in P.STEPS] == ["L0", "L1", "K0", "K1", "K2", "K3", "K4", "K5", "K6"]
    assert STAT_STEPS == ["K0", "K1", "K2", "K3", "K4", "K5"]
    for step in P.STEPS:
        for mode in step.modes:
            plan = step.launch(4, 3, 10, block=64, splits=2, mode=mode)
            own = [launch.kernel for launch in plan.launches if launch.phase != "apply"]
            assert own == list(step.kernels[:len(own)]) and set(own) <= set(step.kernels)


def _data(shape, offset, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.0, 1.5, shape) + offset).astype(np.float32)
    c = shape[1]
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float32)
    beta = rng.normal(0.0, 1.0, c).astype(np.float32)
    return x, gamma, beta


def _run_orders(fn):
    results = []
    with sanitize(True):
        for order, seed in ORDERS:
            with schedule(order, seed):
                results.append([np.array(r) for r in fn()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b, err_msg="result depends on the thread schedule")
    return results[0]


def _check_forward(step, x, gamma, beta, offset, **kw):
    out, mean, var, invstd = _run_orders(lambda: P.forward(step, x, gamma, beta, 1e-5, **kw))
    want, cache = ref.batchnorm_forward(x.astype(np.float64), gamma, beta, 1e-5)
    # K1's one-pass variance loses digits to cancellation as the offset grows (the lesson's point);
    # every other step is stable.
    var_tol = 2e-6 * (1 + offset**2) if step == "K1" else 2e-6 * (1 + abs(offset))
    np.testing.assert_allclose(mean, cache.mean, rtol=1e-6, atol=1e-6 * (1 + abs(offset)))
    np.testing.assert_allclose(var, cache.var, rtol=1e-5, atol=var_tol)
    if step != "K1" or offset < 100:
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5 * (1 + abs(offset)))
        np.testing.assert_allclose(invstd, cache.inv_std, rtol=1e-5)


@pytest.mark.parametrize("step", STAT_STEPS)
@pytest.mark.parametrize("shape, offset", SHAPES, ids=[f"{s}+{o:g}" for s, o in SHAPES])
def test_forward_step_matches_float64_reference(step, shape, offset):
    x, gamma, beta = _data(shape, offset)
    _check_forward(step, x, gamma, beta, offset, block=64, splits=3)


@pytest.mark.parametrize("step", ["K2", "K3", "K4", "K5"])
def test_partial_last_warp_and_rows_shorter_than_the_block(step):
    # 48 threads: a warp of 32 and one of 16 (the warp count is a ceil-div, the merge names only
    # lanes that exist); H*W = 20 < 48: the block covers two rows at a time.
    x, gamma, beta = _data((5, 3, 4, 5), 2.0, seed=1)
    _check_forward(step, x, gamma, beta, 2.0, block=48, splits=2)


def test_a_block_smaller_than_a_warp():
    x, gamma, beta = _data((3, 2, 5, 5), -1.0, seed=4)
    _check_forward("K5", x, gamma, beta, 1.0, block=16, splits=3)


@pytest.mark.parametrize("step", ["K4", "K5"])
def test_misaligned_view_takes_the_scalar_path(step):
    base = np.random.default_rng(2).normal(1.0, 1.0, 2 * 3 * 16 + 1).astype(np.float32)
    x = base[1:].reshape(2, 3, 4, 4)  # 4 bytes past a 16-byte boundary: no float4 loads
    assert x.ctypes.data % 16 != 0
    gamma, beta = np.ones(3, np.float32), np.zeros(3, np.float32)
    _check_forward(step, x, gamma, beta, 1.0, block=64, splits=2)


def _check_backward(shape, offset, seed, **kw):
    x, gamma, beta = _data(shape, offset, seed=seed)
    dy = np.random.default_rng(seed + 1).normal(0, 1, shape).astype(np.float32)
    _, cache = ref.batchnorm_forward(x.astype(np.float64), gamma, beta, 1e-5)
    mean, invstd = cache.mean.astype(np.float32), cache.inv_std.astype(np.float32)
    dx, dgamma, dbeta = _run_orders(lambda: P.backward(dy, x, mean, invstd, gamma, **kw))
    want_dx, want_dgamma, want_dbeta = ref.batchnorm_backward(dy.astype(np.float64), cache)
    scale = np.sqrt(x.size / x.shape[1])  # sums of m terms of size ~1
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, offset", SHAPES, ids=[f"{s}+{o:g}" for s, o in SHAPES])
def test_backward_step_matches_float64_reference(shape, offset):
    _check_backward(shape, offset, 3, block=64, splits=3)


def test_backward_with_a_partial_warp_and_many_slices():
    _check_backward((6, 2, 4, 4), 1.0, 8, block=48, splits=5)


def test_fused_forward_updates_running_statistics_like_torch():
    x, gamma, beta = _data((4, 3, 5, 4), 2.0, seed=5)
    rm = np.linspace(-1, 1, 3).astype(np.float32)
    rv = np.linspace(0.5, 2, 3).astype(np.float32)
    want_m, want_v = rm.astype(np.float64), rv.astype(np.float64)
    ref.update_running_stats(want_m, want_v, x.astype(np.float64), momentum=0.2)
    for _ in range(2):  # twice: the last-block ticket counter must be reset for the next launch
        got_m, got_v = rm.copy(), rv.copy()
        P.forward("K5", x, gamma, beta, block=64, splits=4, running_mean=got_m, running_var=got_v,
                  momentum=0.2)
        np.testing.assert_allclose(got_m, want_m, rtol=1e-6)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-5)


def test_one_pass_variance_cancels_and_welford_does_not():
    rows = P.variance_error(offsets=(0.0, 1e3), shape=(4, 4, 8, 8))
    (_, k1_small, k2_small), (_, k1_large, k2_large) = rows
    assert k1_small < 1e-5 and k2_small < 1e-5
    assert k1_large > 1e-2, "sum(x^2) - n*mean^2 should lose most digits at mean 1000 in float32"
    assert k2_large < 1e-4


def test_planted_missing_syncthreads_in_k1_is_named_by_the_sanitizer():
    good = source("k1_block_tree")
    buggy = good.replace("            s_sq[t] += s_sq[t + stride];\n        }\n        __syncthreads();",
                         "            s_sq[t] += s_sq[t + stride];\n        }")
    assert buggy != good
    from minibn.cuda.executor import CpuRawKernel

    x, _, _ = _data((4, 3, 6, 6), 1.0)
    args = (x, np.zeros(3, np.float32), np.zeros(3, np.float32), np.int32(4), np.int32(3), np.int32(36))
    for order, seed in ORDERS + [("reverse", 0)]:
        with schedule(order, seed), pytest.raises(SanitizerError) as info:
            CpuRawKernel(buggy, "bn_stats_k1")((3,), (64,), args, shared_mem=2 * 64 * 4)
        assert "race on smem[" in str(info.value) and "in bn_stats_k1" in str(info.value)


def test_a_k5_without_the_reader_fence_is_caught():
    # The fix of this very kernel: without the acquire fence after the ticket, the last block's
    # reads of the other blocks' partials are unordered.
    from minibn.cuda.executor import CpuRawModule

    fence = "        if (is_last) __threadfence();  // acquire: and this block sees every released partial\n"
    assert fence in source("k5_forward")
    code = source("k5_forward").replace(fence, "")
    x, _, _ = _data((4, 2, 4, 4), 0.0)
    plan = P.step("K5").launch(4, 2, 16, block=32, splits=3, mode="stats")
    launch = plan.launches[0]
    arrays = P.allocate(plan, P.runtime_for(x), {"x": x})
    args = tuple(plan.scalars[a] if a in plan.scalars else arrays[a] for a in launch.args)
    with pytest.raises(SanitizerError, match=r"race on partial\[\d+\].*no __threadfence\(\) follows that atomic"):
        CpuRawModule(code, label="k5_forward.cu").get_function("bn_fwd_stats")(launch.grid, launch.block, args)


def test_launch_settings_come_from_the_table():
    k1 = P.step("K1").launch(2, 8, 100, block=128, mode="stats").launches
    assert [(l.kernel, l.grid, l.block, l.shared_mem) for l in k1] == [("bn_stats_k1", (8,), (128,), 1024)]
    k4 = P.step("K4").launch(256, 64, 3136, block=256, mode="forward", sm_count=132).launches
    assert [(l.kernel, l.grid, l.phase) for l in k4] == [
        ("bn_stats_k4_partial", (9, 64), "stats"), ("bn_stats_k4_finalize", (1,), "finalize"),
        ("bn_apply", (13, 16384), "apply")]
    k5 = P.step("K5").launch(256, 64, 3136, block=256, mode="forward", sm_count=132).launches
    assert k5[-1].grid == (4, 16384)  # float4: a quarter of the threads per row
    big = P.step("K6").launch(2, 40000, 1, block=64, splits=1, mode="backward").launches
    assert big[1].grid == (1, 65535)  # N*C = 80000 rows: grid.y is capped, the kernel strides
    assert P.step("K3").launch(1, 64, 4, block=32, mode="stats", sm_count=132).scalars["S"] == 1


def test_steps_reject_unfit_launch_shapes():
    x, _, _ = _data((2, 2, 4, 4), 0.0)
    with pytest.raises(ValueError, match="power-of-two"):
        P.stats("K1", x, block=96)
    with pytest.raises(ValueError, match="between 1 and 1024"):
        P.stats("K2", x, block=2048)
    with pytest.raises(ValueError, match="no 'backward' pass"):
        P.step("K2").launch(2, 2, 16, mode="backward")
    with pytest.raises(RuntimeError, match="only on a GPU"):
        P.stats("L0", x)


def test_default_split_fills_the_gpu_for_small_c():
    # 64 channels of 256x56x56: 9 blocks per channel gives 576 blocks, > 4 per SM on 132 SMs.
    S = P.default_splits(64, 256 * 56 * 56, 256, sm_count=H100_SM_COUNT)
    assert S == 9 and 64 * S >= 4 * H100_SM_COUNT
    assert P.default_splits(64, 64, 256, sm_count=H100_SM_COUNT) == 1  # tiny channels are not split
    assert P.default_splits(64, 256 * 56 * 56, 256, sm_count=16) == 1  # a small GPU needs fewer

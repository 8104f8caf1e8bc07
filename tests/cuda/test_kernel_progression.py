"""Every CUDA C step of the progression, on awkward shapes, under two schedule orders, against the
float64 reference: right answers, and the same bits whichever order the threads run in."""
import numpy as np
import pytest

from minibn import functional as ref
from minibn.cuda import progression as P
from minibn.cuda.executor import CpuRawKernel, schedule
from minibn.cuda.sources import source

STAT_STEPS = ["K0", "K1", "K2", "K3", "K4", "K5"]
ORDERS = [("forward", 0), ("shuffle", 7)]

# (shape, mean offset): N*H*W not a multiple of 32, H*W smaller than the block, C = 1, H*W a
# multiple of 4 (float4 path) and not, 2-D input, and a mean far from 0.
SHAPES = [
    ((3, 5, 7, 9), 0.0),
    ((2, 3, 2, 2), 1.0),
    ((4, 1, 8, 8), -2.0),
    ((16, 3), 0.5),
    ((5, 2, 6, 6), 300.0),
]


def _data(shape, offset, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(0.0, 1.5, shape) + offset).astype(np.float32)
    c = shape[1]
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float32)
    beta = rng.normal(0.0, 1.0, c).astype(np.float32)
    return x, gamma, beta


def _run_orders(fn):
    results = []
    for order, seed in ORDERS:
        with schedule(order, seed):
            results.append([np.array(r) for r in fn()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b, err_msg="result depends on the thread schedule")
    return results[0]


@pytest.mark.parametrize("step", STAT_STEPS)
@pytest.mark.parametrize("shape, offset", SHAPES, ids=[f"{s}+{o:g}" for s, o in SHAPES])
def test_forward_step_matches_float64_reference(step, shape, offset):
    x, gamma, beta = _data(shape, offset)
    out, mean, var, invstd = _run_orders(lambda: P.forward(step, x, gamma, beta, 1e-5, block=64, splits=3))
    want, cache = ref.batchnorm_forward(x.astype(np.float64), gamma, beta, 1e-5)
    # K1's one-pass variance loses digits to cancellation as the offset grows (the lesson's point);
    # every other step is stable.
    var_tol = 2e-6 * (1 + offset**2) if step == "K1" else 2e-6 * (1 + abs(offset))
    np.testing.assert_allclose(mean, cache.mean, rtol=1e-6, atol=1e-6 * (1 + abs(offset)))
    np.testing.assert_allclose(var, cache.var, rtol=1e-5, atol=var_tol)
    if step != "K1" or offset < 100:
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5 * (1 + abs(offset)))
        np.testing.assert_allclose(invstd, cache.inv_std, rtol=1e-5)


@pytest.mark.parametrize("shape, offset", SHAPES, ids=[f"{s}+{o:g}" for s, o in SHAPES])
def test_backward_step_matches_float64_reference(shape, offset):
    x, gamma, beta = _data(shape, offset, seed=3)
    dy = np.random.default_rng(4).normal(0, 1, shape).astype(np.float32)
    _, cache = ref.batchnorm_forward(x.astype(np.float64), gamma, beta, 1e-5)
    mean, invstd = cache.mean.astype(np.float32), cache.inv_std.astype(np.float32)
    dx, dgamma, dbeta = _run_orders(lambda: P.backward(dy, x, mean, invstd, gamma, block=64, splits=3))
    want_dx, want_dgamma, want_dbeta = ref.batchnorm_backward(dy.astype(np.float64), cache)
    scale = np.sqrt(x.size / x.shape[1])  # sums of m terms of size ~1
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-4)


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


def test_planted_missing_syncthreads_in_k1_is_caught():
    good = source("k1_block_tree")
    buggy = good.replace("            s_sq[t] += s_sq[t + stride];\n        }\n        __syncthreads();",
                         "            s_sq[t] += s_sq[t + stride];\n        }")
    assert buggy != good
    x, _, _ = _data((4, 3, 6, 6), 1.0)
    cache_mean = x.astype(np.float64).mean(axis=(0, 2, 3))
    means = []
    for order, seed in ORDERS + [("reverse", 0)]:
        mean, var = np.zeros(3, np.float32), np.zeros(3, np.float32)
        with schedule(order, seed):
            CpuRawKernel(buggy, "bn_stats_k1")((3,), (64,), (x, mean, var, np.int32(4), np.int32(3),
                                                             np.int32(36)), shared_mem=2 * 64 * 4)
        means.append(mean)
    wrong = [not np.allclose(m, cache_mean, rtol=1e-5) for m in means]
    differ = any(not np.array_equal(means[0], m) for m in means[1:])
    assert any(wrong) and differ


def test_steps_reject_unfit_launch_shapes():
    x, _, _ = _data((2, 2, 4, 4), 0.0)
    with pytest.raises(ValueError, match="power-of-two"):
        P.stats("K1", x, block=96)
    with pytest.raises(ValueError, match="multiple of 32"):
        P.stats("K2", x, block=48)
    with pytest.raises(RuntimeError, match="only on a GPU"):
        P.stats("L0", x)


def test_default_split_fills_the_gpu_for_small_c():
    # 64 channels of 256x56x56: 9 blocks per channel gives 576 blocks, > 4 per SM on 132 SMs.
    S = P.default_splits(64, 256 * 56 * 56, 256)
    assert 64 * S >= 4 * P.SM_COUNT
    assert P.default_splits(64, 64, 256) == 1  # tiny channels are not split

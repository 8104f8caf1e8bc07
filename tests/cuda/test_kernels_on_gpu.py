"""The same kernels on a real GPU through CuPy (skipped unless cupy.is_available())."""
import numpy as np
import pytest

from minibn import functional as ref
from minibn.cuda import progression as P
from minibn.cuda.runtime import gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU (CuPy)")]

FORWARD_STEPS = [s.key for s in P.STEPS if s.key != "K6"]


@pytest.fixture
def data():
    import cupy

    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.5, (6, 5, 7, 9)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, 5).astype(np.float32)
    beta = rng.normal(0, 1, 5).astype(np.float32)
    dy = rng.normal(0, 1, x.shape).astype(np.float32)
    return cupy, x, gamma, beta, dy


@pytest.mark.parametrize("step", FORWARD_STEPS)
@pytest.mark.parametrize("block", [64, 48])
def test_step_on_gpu_matches_reference(step, block, data):
    cp, x, gamma, beta, _ = data
    if step == "K1" and block & (block - 1):
        pytest.skip("K1's tree needs a power-of-two block")
    out, mean, var, invstd = P.forward(step, cp.asarray(x), cp.asarray(gamma), cp.asarray(beta), block=block)
    want, cache = ref.batchnorm_forward(x.astype(np.float64), gamma, beta)
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(var), cache.var, rtol=1e-4, atol=1e-5)


def test_api_on_gpu_matches_cpu_executor(data):
    import minibn.cuda as mc

    cp, x, gamma, beta, dy = data
    out_gpu, cache_gpu = mc.batchnorm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta))
    out_cpu, cache_cpu = mc.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(cp.asnumpy(out_gpu), out_cpu, rtol=1e-5, atol=1e-5)
    dx_gpu, dg_gpu, db_gpu = mc.batchnorm_backward(cp.asarray(dy), cache_gpu)
    dx_cpu, dg_cpu, db_cpu = mc.batchnorm_backward(dy, cache_cpu)
    np.testing.assert_allclose(cp.asnumpy(dx_gpu), dx_cpu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(dg_gpu), dg_cpu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(db_gpu), db_cpu, rtol=1e-4, atol=1e-4)


def test_gpu_path_refuses_a_strided_view(data):
    from minibn.cuda.executor import KernelError

    cp, x, _, _, _ = data
    strided = cp.asarray(x)[:, :, ::2]
    with pytest.raises(KernelError, match="C-contiguous"):
        P.stats("K2", strided)

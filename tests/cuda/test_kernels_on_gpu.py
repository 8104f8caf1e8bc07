"""The same kernels on a real GPU through CuPy (skipped unless cupy.is_available())."""
import numpy as np
import pytest

from minibn import functional as ref
from minibn.cuda.runtime import gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU (CuPy)")]

STEPS = ["L0", "L1", "K0", "K1", "K2", "K3", "K4", "K5"]


@pytest.fixture
def data():
    import cupy

    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 1.5, (6, 5, 7, 9)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, 5).astype(np.float32)
    beta = rng.normal(0, 1, 5).astype(np.float32)
    dy = rng.normal(0, 1, x.shape).astype(np.float32)
    return cupy, x, gamma, beta, dy


@pytest.mark.parametrize("step", STEPS)
def test_step_on_gpu_matches_reference(step, data):
    from minibn.cuda import progression as P

    cp, x, gamma, beta, _ = data
    out, mean, var, invstd = P.forward(step, cp.asarray(x), cp.asarray(gamma), cp.asarray(beta))
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

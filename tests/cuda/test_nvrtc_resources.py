"""Every kernel compiles with NVRTC for sm_80 and sm_90, spills nothing and stays within its
register and shared-memory budgets; occupancy follows the CUDA calculator's rules."""
import pytest

from minibn.cuda import nvrtc
from minibn.cuda.sources import kernel_files, source

pytestmark = pytest.mark.skipif(not nvrtc.nvrtc_available(), reason="needs nvidia-cuda-nvrtc-cu12")

REGISTER_BUDGET = 64  # at 256 threads per block, 64 registers still allow 50% occupancy
STATIC_SHARED_BUDGET = 1024  # bytes: warp partials only; K1's tree is dynamic shared memory


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("file", kernel_files())
def test_kernel_fits_its_budget(file, arch):
    report = nvrtc.compile_report(file, arch)
    names = {r.kernel for r in report}
    assert names == set(nvrtc_kernel_names(file)), "ptxas reported a different set of kernels"
    for r in report:
        assert r.spills == 0, f"{r.kernel} spills {r.spills} bytes on {arch}"
        assert r.stack == 0, f"{r.kernel} uses {r.stack} bytes of local-memory stack on {arch}"
        assert r.registers <= REGISTER_BUDGET, f"{r.kernel}: {r.registers} registers on {arch}"
        assert r.shared <= STATIC_SHARED_BUDGET, f"{r.kernel}: {r.shared} B static shared on {arch}"
        warps, _ = nvrtc.occupancy(r.registers, 256, r.shared, arch)
        assert warps >= 32, f"{r.kernel}: only {warps} resident warps per SM at 256 threads"


def nvrtc_kernel_names(file):
    from minibn.cuda.executor import parse_kernels

    return list(parse_kernels(source(file)))


def test_spills_are_reported_when_registers_are_capped():
    # The budget assertions must be able to fail: capped at 24 registers (sm_90's floor),
    # K6's reduce (46 registers uncapped) spills, and the parser sees it.
    log = nvrtc.compile_log(source("k6_backward"), "sm_90", options=("--maxrregcount=24",))
    report = {r.kernel: r for r in nvrtc.parse_log(log)}
    assert report["bn_bwd_reduce"].registers <= 24
    assert report["bn_bwd_reduce"].spills > 0
    assert report["bn_bwd_reduce"].shared == 260  # float2[32] + int: parsed past the stack note


def test_cuda_only_errors_are_caught_without_a_gpu():
    with pytest.raises(nvrtc.NvrtcError, match="undefined|identifier"):
        nvrtc.compile_log('extern "C" __global__ void k(float* y) { y[0] = nope; }')


@pytest.mark.parametrize(
    "registers, threads, shared, warps, limiter",
    [
        (25, 256, 0, 64, "warps"),          # <= 32 registers: the full 64 warps
        (34, 256, 0, 48, "registers"),      # 1280 registers per warp: 6 blocks of 8 warps
        (64, 256, 0, 32, "registers"),
        (32, 32, 0, 32, "blocks"),          # 32 blocks per SM cap: one warp each
        (32, 1024, 150 * 1024, 32, "shared memory"),  # 151 KB per block: one fits
    ],
)
def test_occupancy_follows_the_hopper_limits(registers, threads, shared, warps, limiter):
    assert nvrtc.occupancy(registers, threads, shared, "sm_90") == (warps, limiter)

"""Every kernel compiles with NVRTC for sm_80 and sm_90, spills nothing and stays within its
register and shared-memory budgets; occupancy follows the CUDA calculator's rules."""
import pytest

from minibn.cuda import nvrtc
from minibn.cuda.sources import kernel_files, source

# Compiling needs the NVRTC wheel (Linux/Windows); the occupancy arithmetic needs nothing.
needs_nvrtc = pytest.mark.skipif(not nvrtc.nvrtc_available(), reason="needs nvidia-cuda-nvrtc-cu12")

REGISTER_BUDGET = 64  # at 256 threads per block, 64 registers still allow 50% occupancy
STATIC_SHARED_BUDGET = 1024  # bytes: warp partials only; K1's tree is dynamic shared memory


@needs_nvrtc
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


@needs_nvrtc
def test_spills_are_reported_when_registers_are_capped():
    # The budget assertions must be able to fail: capped at 24 registers (sm_90's floor),
    # K6's reduce (45 registers uncapped) spills, and the parser sees it.
    log = nvrtc.compile_log(source("k6_backward"), "sm_90", options=("--maxrregcount=24",))
    report = {r.kernel: r for r in nvrtc.parse_log(log)}
    assert report["bn_bwd_reduce"].registers <= 24
    assert report["bn_bwd_reduce"].spills > 0
    assert report["bn_bwd_reduce"].shared == 260  # float2[32] + int: parsed past the stack note


@needs_nvrtc
def test_cuda_only_errors_are_caught_without_a_gpu():
    with pytest.raises(nvrtc.NvrtcError, match="undefined|identifier"):
        nvrtc.compile_log('extern "C" __global__ void k(float* y) { y[0] = nope; }')


# Hand-computed from the CUDA occupancy calculator's rules for sm_90 (per SM: 65536 registers in
# 4 sub-partitions, allocated per warp in units of 256; 64 warps; 32 blocks; 228 KB of shared
# memory in units of 128 B, plus 1 KB reserved per block):
@pytest.mark.parametrize(
    "registers, threads, shared, warps, limiter",
    [
        (25, 256, 0, 64, "warps"),      # 800 -> 1024 regs/warp: 16 warps per sub-partition, 64
        (34, 256, 0, 48, "registers"),  # 1088 -> 1280: 12 per sub-partition = 48 warps = 6 blocks
        (40, 96, 0, 48, "registers"),   # 1280: 48 warps = 16 blocks of 3 (a whole-SM split says 51)
        (40, 64, 0, 48, "registers"),   # 48 warps = 24 blocks of 2 (a whole-SM split says 50)
        (42, 256, 0, 40, "registers"),  # 1344 -> 1536: 10 per sub-partition = 40 = 5 blocks of 8
        (64, 1024, 0, 32, "registers"),  # 2048 x 32 warps = 64K: exactly one block
        (72, 1024, 0, 0, "registers"),  # 2304 x 32 = 73728 > 64K per block: cannot launch
        (176, 352, 0, 0, "registers"),  # 11 warps x 5632 fit 64K, but rounded to 12 warps they don't
        (32, 96, 0, 63, "warps"),       # 21 blocks of 3 warps
        (32, 32, 0, 32, "blocks"),      # 32 blocks per SM cap: one warp each
        (32, 256, 48 * 1024, 32, "shared memory"),  # 49 KB per block: 4 fit in 228 KB
        (32, 32, 15626, 13, "shared memory"),  # 16650 B -> 16768 B: 13 blocks (14 without the 128 B unit)
        (32, 1024, 150 * 1024, 32, "shared memory"),  # 151 KB per block (opted in): one fits
        (32, 256, 227 * 1024 + 1, 0, "shared memory"),  # past the opt-in maximum: cannot launch
    ],
)
def test_occupancy_follows_the_occupancy_calculator(registers, threads, shared, warps, limiter):
    assert nvrtc.occupancy(registers, threads, shared, "sm_90") == (warps, limiter)


def test_sm80_has_less_shared_memory():
    # 164 KB per SM: 3 blocks of 49 KB instead of sm_90's 4.
    assert nvrtc.occupancy(32, 256, 48 * 1024, "sm_80") == (24, "shared memory")
    with pytest.raises(ValueError, match="threads per block"):
        nvrtc.occupancy(32, 2048, 0)

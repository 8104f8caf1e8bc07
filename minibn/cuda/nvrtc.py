"""Registers, shared memory and spills of every kernel, without a GPU, and the occupancy they allow.

NVRTC (the ``nvidia-cuda-nvrtc-cu12`` wheel) compiles CUDA C to a cubin for a real architecture
with ptxas's verbose report (``--ptxas-options=-v``), all on the CPU. It is called directly
through ctypes: CuPy's own compile path asks the driver for the device first and fails with no
GPU. The report gives, per kernel, the registers per thread, the static shared memory, the stack
frame and the spill stores/loads; ``occupancy`` turns those into resident warps per SM.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from minibn.cuda.sources import kernel_files, source

__all__ = [
    "ARCHS",
    "KernelResources",
    "NvrtcError",
    "compile_report",
    "nvrtc_available",
    "occupancy",
    "occupancy_limits",
    "resource_table",
]


class NvrtcError(RuntimeError):
    """NVRTC is missing or rejected the source."""


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of one compute capability, as the CUDA occupancy calculator
    (``cuda_occupancy.h``) knows them."""

    name: str
    registers: int = 65536  # per SM
    registers_per_block: int = 65536
    register_unit: int = 256  # registers are allocated per warp, in units of 256
    sub_partitions: int = 4  # the register file is split between 4 schedulers
    max_registers_per_thread: int = 255
    max_warps: int = 64
    max_blocks: int = 32
    max_threads_per_block: int = 1024
    shared: int = 228 * 1024  # per SM, at the largest carveout
    shared_per_block: int = 48 * 1024  # without opting in
    shared_per_block_optin: int = 227 * 1024
    reserved_shared: int = 1024  # the driver keeps 1 KB of every block's shared memory (cc >= 8.0)
    shared_unit: int = 128  # shared memory is allocated in units of 128 bytes


ARCHS = {
    "sm_80": Arch("sm_80", shared=164 * 1024, shared_per_block_optin=163 * 1024),
    "sm_90": Arch("sm_90"),
}


@dataclass(frozen=True)
class KernelResources:
    kernel: str
    arch: str
    registers: int
    shared: int  # static shared memory, bytes
    stack: int  # stack frame, bytes
    spill_stores: int
    spill_loads: int

    @property
    def spills(self):
        return self.spill_stores + self.spill_loads


@lru_cache(maxsize=1)
def _lib():
    candidates = []
    try:
        import nvidia.cuda_nvrtc

        for root in nvidia.cuda_nvrtc.__path__:
            candidates += sorted(Path(root, "lib").glob("libnvrtc.so*"))
    except ImportError:
        pass
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if "builtins" in path.name or ".alt." in path.name:
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    raise NvrtcError("libnvrtc was not found: pip install nvidia-cuda-nvrtc-cu12 (Linux/Windows only)")


def nvrtc_available():
    try:
        _lib()
    except NvrtcError:
        return False
    return True


def _check(lib, status, what):
    if status != 0:
        raise NvrtcError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def compile_log(code, arch="sm_90", name="kernel.cu", options=()):
    """Compile ``code`` with NVRTC to a cubin for ``arch``; return the compile log (ptxas -v)."""
    lib = _lib()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}", "--ptxas-options=-v", "--std=c++17", *options]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        status = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if status != 0:
            raise NvrtcError(f"NVRTC could not compile {name} for {arch}:\n{log.strip()}")
        return log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_log(log):
    """``[KernelResources, ...]`` from a ptxas -v log, one per entry function."""
    found = []
    current = None
    frame = (0, 0, 0)
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current, arch = m.group(1), m.group(2)
            frame = (0, 0, 0)
        elif current and (m := _FRAME.search(line)):
            frame = tuple(int(g) for g in m.groups())
        elif current and (m := _USED.search(line)):
            smem = _SMEM.search(line)
            found.append(KernelResources(current, arch, int(m.group(1)), int(smem.group(1)) if smem else 0,
                                         *frame))
            current = None
    return found


@lru_cache(maxsize=None)
def compile_report(file, arch="sm_90"):
    """Resources of every kernel in ``kernels/<file>.cu`` for ``arch``."""
    return tuple(parse_log(compile_log(source(file), arch, f"{file}.cu")))


def _round_up(x, unit):
    return -(-x // unit) * unit


def occupancy_limits(registers, threads, shared=0, arch="sm_90"):
    """Resident blocks per SM allowed by each limit, by the CUDA occupancy calculator's rules
    (``cudaOccMaxActiveBlocksPerMultiprocessor``, default cache and carveout settings):

    - warps: ``max_warps // ceil(threads / 32)``; blocks: at most ``max_blocks``;
    - registers: a warp gets ``ceil(registers * 32 / 256) * 256`` registers, and each of the 4
      sub-partitions holds ``floor(65536 / 4 / that)`` warps, so an SM holds 4 times as many
      warps, in whole blocks; a block whose warps (rounded up to a multiple of 4, as the hardware
      check assumes) need more than 64K registers cannot launch at all;
    - shared memory: ``static + dynamic + 1 KB reserved``, rounded up to 128 bytes, out of the
      SM's 228 KB (164 KB on sm_80); more than 48 KB per block needs the kernel's opt-in, and more
      than the opt-in maximum cannot launch.
    """
    a = ARCHS[arch]
    if not 1 <= threads <= a.max_threads_per_block:
        raise ValueError(f"threads per block must be 1..{a.max_threads_per_block}, got {threads}")
    if not 0 <= registers <= a.max_registers_per_thread:
        raise ValueError(f"registers per thread must be 0..{a.max_registers_per_thread}, got {registers}")
    warps = -(-threads // 32)
    limits = {"warps": a.max_warps // warps, "blocks": a.max_blocks}
    per_warp = _round_up(registers * 32, a.register_unit)
    if per_warp == 0:
        limits["registers"] = a.max_blocks
    elif (per_warp * _round_up(warps, a.sub_partitions) > a.registers_per_block
          or per_warp * warps > a.registers_per_block):
        limits["registers"] = 0
    else:
        warps_per_sub_partition = (a.registers // a.sub_partitions) // per_warp
        limits["registers"] = warps_per_sub_partition * a.sub_partitions // warps
    allocated = _round_up(shared + a.reserved_shared, a.shared_unit)
    # A kernel that needs more than 48 KB must have opted in to launch at all; assume it did.
    cap = (a.shared_per_block if shared <= a.shared_per_block else a.shared_per_block_optin) + a.reserved_shared
    limits["shared memory"] = 0 if allocated > cap else a.shared // allocated
    return limits


def occupancy(registers, threads, shared=0, arch="sm_90"):
    """Resident warps per SM and what limits them, for a kernel using ``registers`` per thread,
    ``threads`` per block and ``shared`` bytes of shared memory per block (static + dynamic).

    Returns ``(warps, limiter)`` with ``warps / ARCHS[arch].max_warps`` the occupancy; 0 warps
    when the block cannot launch at all (the limiter says why). See ``occupancy_limits``.
    """
    limits = occupancy_limits(registers, threads, shared, arch)
    limiter = min(limits, key=limits.get)  # ties: the first of warps, blocks, registers, shared
    return limits[limiter] * -(-threads // 32), limiter


def resource_table(arch="sm_90", threads=256, dynamic_shared=None):
    """Rows ``(file, kernel, registers, shared, spills, warps, occupancy, limiter)`` for every
    kernel file. ``dynamic_shared`` maps a kernel name to its dynamic shared memory at
    ``threads`` per block (K1's tree uses 2 floats per thread)."""
    dynamic_shared = dynamic_shared or {"bn_stats_k1": 2 * threads * 4}
    rows = []
    for file in kernel_files():
        for r in compile_report(file, arch):
            shared = r.shared + dynamic_shared.get(r.kernel, 0)
            warps, limiter = occupancy(r.registers, threads, shared, arch)
            rows.append((file, r.kernel, r.registers, shared, r.spills, warps,
                         warps / ARCHS[arch].max_warps, limiter))
    return rows

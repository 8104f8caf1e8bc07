"""The runtime layer: the CuPy path checks arguments as the CPU executor does (CuPy itself would
pass a strided view or a wrong dtype straight to the kernel), allocations come from the right
place, and the SM count comes from the device when there is one."""
import subprocess
import sys

import numpy as np
import pytest

from minibn.cuda import cpu_memory, device
from minibn.cuda.executor import KernelError, parse_kernels
from minibn.cuda.runtime import CheckedKernel, Runtime

SRC = 'extern "C" __global__ void scale(const float* x, float* y, float a, int n) { }'


class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


def _kernel():
    # Stand-in arrays: the check only reads flags and dtype, which NumPy arrays have too.
    return CheckedKernel(_Recorder(), "scale", parse_kernels(SRC)["scale"])


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.ones(8, np.float32)[::2], np.zeros(4, np.float32), np.float32(2), np.int32(4)), "C-contiguous"),
        ((np.ones(4, np.float64), np.zeros(4, np.float32), np.float32(2), np.int32(4)), "reads float32"),
        ((np.ones(4, np.float32), np.zeros(4, np.float32), 2.0, np.int32(4)), "not a Python float"),
        ((np.ones(4, np.float32), np.zeros(4, np.float32), np.float32(2)), "takes 4 arguments"),
    ],
)
def test_gpu_kernels_refuse_what_the_kernel_would_misread(args, message, monkeypatch):
    import minibn.cuda.runtime as runtime

    monkeypatch.setattr(runtime, "is_cupy", lambda a: isinstance(a, np.ndarray))
    k = _kernel()
    with pytest.raises(KernelError, match=message):
        k((1,), (32,), args)
    assert k.function.calls == []


def test_gpu_kernels_pass_good_arguments_through(monkeypatch):
    import minibn.cuda.runtime as runtime

    monkeypatch.setattr(runtime, "is_cupy", lambda a: isinstance(a, np.ndarray))
    k = _kernel()
    args = (np.ones(4, np.float32), np.zeros(4, np.float32), np.float32(2), np.int32(4))
    k((1,), (32,), args, shared_mem=16)
    assert k.function.calls == [((1,), (32,), args, 16)]


def test_cpu_allocations_are_device_like():
    rt = Runtime("cpu")
    a = rt.empty(10)
    assert a.ctypes.data % cpu_memory.ALIGN == 0 and np.isnan(a).all()
    lo, hi, init = cpu_memory.lookup(a.ctypes.data, a.nbytes)
    assert lo == a.ctypes.data - cpu_memory.RED_ZONE and hi == a.ctypes.data + 40 + cpu_memory.RED_ZONE
    assert init != 0  # tracked: nothing written yet
    z = rt.zeros(3, np.uint32)
    assert z.tolist() == [0, 0, 0] and cpu_memory.lookup(z.ctypes.data, z.nbytes)[2] == 0
    assert cpu_memory.lookup(np.zeros(4).ctypes.data, 32) is None  # not ours


def test_the_record_goes_with_the_memory():
    a = cpu_memory.empty(1000)
    address = a.ctypes.data
    del a
    import gc

    gc.collect()
    assert cpu_memory.lookup(address, 4) is None


def test_sm_count_is_the_devices_or_an_h100s(monkeypatch):
    import minibn.cuda.device as dev

    monkeypatch.setattr(dev, "gpu_available", lambda: False)
    assert device.sm_count() == device.H100_SM_COUNT == 132
    monkeypatch.setattr(dev, "gpu_available", lambda: True)
    monkeypatch.setattr(dev, "_device_sm_count", lambda: 108)
    assert device.sm_count() == 108


def test_mark_written_counts_numpy_writes_as_written():
    a = cpu_memory.empty(8)
    a[...] = 1.0  # NumPy writes are invisible to the record...
    assert cpu_memory.lookup(a.ctypes.data, a.nbytes)[2] != 0
    cpu_memory.mark_written(a)  # ...until marked
    init = cpu_memory.lookup(a.ctypes.data, a.nbytes)[2]
    import ctypes

    assert ctypes.string_at(init, a.nbytes) == b"\x01" * a.nbytes


# Device memory that only the garbage collector frees (a reference cycle), collected while
# lookup() holds the allocation table: its record's finalizer then runs inside lookup. With the
# thresholds below the collection falls there deterministically.
_COLLECTED_INSIDE_LOOKUP = """
import gc
from minibn.cuda import cpu_memory
keep = cpu_memory.empty(16)
addr, nbytes = keep.ctypes.data, keep.nbytes
gc.collect()
a = cpu_memory.empty(16)
freed = a.ctypes.data
cycle = [a]
cycle.append(cycle)
del a
gc.collect(0)  # the cycle survives into generation 1
gc.set_threshold(1, 1, 1000)
gc.disable()
del cycle
gc.enable()
assert cpu_memory.lookup(addr, nbytes) is not None
assert cpu_memory.lookup(freed, 4) is None
print("done")
"""


def test_memory_freed_by_the_collector_during_a_lookup_is_forgotten_without_a_deadlock():
    # This deadlocked lesson 06's checks: a finalizer waiting for the lock its own thread held.
    try:
        proc = subprocess.run([sys.executable, "-c", _COLLECTED_INSIDE_LOOKUP],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("lookup() hung: the finalizer of memory the collector freed inside it waited "
                    "for the lock lookup held")
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr

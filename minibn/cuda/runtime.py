"""Where a kernel runs: CuPy arrays on the GPU through ``cupy.RawModule``, NumPy arrays on the
CPU through ``minibn.cuda.executor``. Both compile the same text from ``minibn.cuda.sources``
and are launched with CuPy's ``kernel(grid, block, args, shared_mem=...)`` call."""
from __future__ import annotations

import numpy as np

from minibn.cuda.executor import CpuRawModule
from minibn.cuda.sources import source

__all__ = ["Runtime", "gpu_available", "is_cupy", "runtime_for"]

NVRTC_OPTIONS = ("--std=c++17",)


def is_cupy(a):
    return type(a).__module__.split(".")[0] == "cupy"


def gpu_available():
    """True when CuPy is installed and sees a CUDA GPU (importing CuPy alone says nothing)."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:  # a broken driver install counts as no GPU
        return False


class Runtime:
    """Compiles sources (once each) and allocates arrays for one device kind."""

    def __init__(self, device):
        self.device = device
        self._modules = {}
        if device == "gpu":
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def compile(self, code, label="kernel.cu"):
        """A module (``get_function(name)``) for arbitrary CUDA C ``code``, cached by text."""
        if code not in self._modules:
            if self.device == "gpu":
                import cupy

                self._modules[code] = cupy.RawModule(code=code, options=NVRTC_OPTIONS)
            else:
                self._modules[code] = CpuRawModule(code, label=label)
        return self._modules[code]

    def module(self, name):
        return self.compile(source(name), label=f"{name}.cu")

    def kernel(self, file, name):
        return self.module(file).get_function(name)


_runtimes = {}


def runtime_for(x):
    """The GPU runtime for a CuPy array, the CPU runtime for anything else."""
    device = "gpu" if is_cupy(x) else "cpu"
    if device not in _runtimes:
        _runtimes[device] = Runtime(device)
    return _runtimes[device]

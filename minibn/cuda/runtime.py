"""Where a kernel runs: CuPy arrays on the GPU through ``cupy.RawModule``, NumPy arrays on the
CPU through ``minibn.cuda.executor``. Both compile the same text from ``minibn.cuda.sources``
and are launched with CuPy's ``kernel(grid, block, args, shared_mem=...)`` call, and both refuse
arguments a kernel would misread (wrong count, dtype, a non-contiguous array, a Python float for
a ``float``) with the same message: CuPy itself passes arrays straight through, so a strided
view would be read as if it were contiguous."""
from __future__ import annotations

import numpy as np

from minibn.conventions import is_cupy
from minibn.cuda import cpu_memory
from minibn.cuda.executor import CpuRawModule, check_args, parse_kernels
from minibn.cuda.sources import source

__all__ = ["Runtime", "gpu_available", "is_cupy", "runtime_for"]

NVRTC_OPTIONS = ("--std=c++17",)


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


class CheckedKernel:
    """A CuPy kernel whose arguments are checked against its signature before each launch."""

    def __init__(self, function, name, params):
        self.function = function
        self.name = name
        self.params = params

    def __call__(self, grid, block, args, *, shared_mem=0):
        check_args(self.params, args, self.name, is_array=is_cupy)
        self.function(grid, block, tuple(args), shared_mem=shared_mem)


class CheckedModule:
    """``cupy.RawModule`` with ``get_function`` returning ``CheckedKernel``s."""

    def __init__(self, module, code):
        self.module = module
        self.kernels = parse_kernels(code)

    def get_function(self, name):
        if name not in self.kernels:
            from minibn.cuda.executor import KernelError

            found = ", ".join(self.kernels) or "none"
            raise KernelError(f"no __global__ kernel named {name!r} in the source (found: {found})")
        return CheckedKernel(self.module.get_function(name), name, self.kernels[name])


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

                self._modules[code] = CheckedModule(cupy.RawModule(code=code, options=NVRTC_OPTIONS), code)
            else:
                self._modules[code] = CpuRawModule(code, label=label)
        return self._modules[code]

    def module(self, name):
        return self.compile(source(name), label=f"{name}.cu")

    def kernel(self, file, name):
        return self.module(file).get_function(name)

    def empty(self, shape, dtype=np.float32):
        """Uninitialized memory, as ``cupy.empty``; on the CPU poisoned and tracked, so that the
        sanitizer reports a kernel reading it before anything wrote it."""
        return self.xp.empty(shape, dtype) if self.device == "gpu" else cpu_memory.empty(shape, dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.xp.zeros(shape, dtype) if self.device == "gpu" else cpu_memory.zeros(shape, dtype)


_runtimes = {}


def runtime_for(x):
    """The GPU runtime for a CuPy array, the CPU runtime for anything else."""
    device = "gpu" if is_cupy(x) else "cpu"
    if device not in _runtimes:
        _runtimes[device] = Runtime(device)
    return _runtimes[device]

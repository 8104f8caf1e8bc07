"""BatchNorm as CUDA C kernels, runnable with or without a GPU (lesson 06).

- ``batchnorm_forward`` / ``batchnorm_backward``: the final kernels behind ``minibn.functional``'s
  interface; CuPy arrays run on the GPU, NumPy arrays through the CPU executor.
- ``progression``: every step of the lesson's kernel progression (``STEPS``, with its launches).
- ``executor``: ``CpuRawKernel``/``CpuRawModule``, CuPy's launch API on the CPU (g++ + a fiber
  shim), for tests and for learners with no GPU, with a sanitizer (racecheck, memcheck,
  initcheck, synccheck; ``sanitizer``, ``cpu_memory``, ``bug_classes``). A correctness tool,
  never a speed model (docs/cpu-executor.md).
- ``gpu_bench``: timing on a GPU (CUDA events, % of a measured copy, torch baselines).
- ``nvrtc``: registers, shared memory and spills of every kernel from NVRTC, and occupancy.
- ``sources``: the ``.cu`` texts, shared by all of the above.
"""
from minibn.cuda.api import KernelCache, batchnorm_backward, batchnorm_forward
from minibn.cuda.runtime import gpu_available

__all__ = ["KernelCache", "batchnorm_backward", "batchnorm_forward", "gpu_available"]

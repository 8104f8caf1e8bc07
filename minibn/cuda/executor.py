"""Run CUDA C kernels on the CPU: the same source text CuPy's ``RawKernel`` runs on a GPU.

``CpuRawKernel(code, name)(grid, block, args, shared_mem=0)`` and ``CpuRawModule(code)
.get_function(name)`` mirror CuPy's ``RawKernel`` and ``RawModule``, but take NumPy arrays and
NumPy scalars. The source is compiled once by g++ together with ``shim/cuda_shim.h``, which runs
every CUDA thread as a fiber and every block in turn (see the header for what it checks), and the
shared library is cached on disk under a hash of the source, the shim, the options and the
compiler version: ``$MINIBN_CACHE_DIR``, else ``~/.cache/minibn/cuda-shim``, else a temp dir.

The order in which threads run between barriers (and blocks run) is a parameter, ``schedule``:
``"forward"``, ``"reverse"`` or ``"shuffle"`` (seeded). A correct kernel gives the same bits under
every order (unless it adds floats atomically inside a block); a kernel missing a
``__syncthreads()`` usually does not, which is how the tests and the checks catch one.

This is a correctness tool, never a speed model: it says nothing about how fast a kernel runs on
a GPU (coalescing, bank conflicts, occupancy are all invisible), nor about inter-block
spin-waits (blocks run one after another, so a block waiting for a later one never finishes).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CompileError",
    "CpuRawKernel",
    "CpuRawModule",
    "KernelError",
    "ORDERS",
    "schedule",
]

SHIM = Path(__file__).parent / "shim" / "cuda_shim.h"
ORDERS = ("forward", "reverse", "shuffle")
MAX_DYNAMIC_SHARED = 48 * 1024  # above this CUDA needs an explicit opt-in per kernel
_CXXFLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-U_FORTIFY_SOURCE", "-Wno-attributes")
_ERRLEN = 1024


class KernelError(RuntimeError):
    """A kernel launch failed: bad arguments, a divergent barrier, a deadlock."""


class CompileError(KernelError):
    """g++ rejected the kernel source; the message holds the compiler's first errors."""


# ---- schedule --------------------------------------------------------------------------------

_schedule = threading.local()


@contextlib.contextmanager
def schedule(order="forward", seed=0):
    """Run CPU launches inside the block with threads (and blocks) taken in ``order``.

    ``order``: ``"forward"`` (thread 0 first), ``"reverse"`` or ``"shuffle"`` (a permutation drawn
    from ``seed``, fixed per block).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    previous = getattr(_schedule, "value", None)
    _schedule.value = (order, int(seed))
    try:
        yield
    finally:
        _schedule.value = previous


def current_schedule():
    """The ``(order, seed)`` CPU launches use now: ``schedule()``'s, else ``$MINIBN_SHIM_ORDER``."""
    value = getattr(_schedule, "value", None)
    if value is not None:
        return value
    order = os.environ.get("MINIBN_SHIM_ORDER", "forward")
    return (order if order in ORDERS else "forward", 0)


def launch_timeout():
    """CPU seconds one launch may take before it is stopped as hung: ``$MINIBN_SHIM_TIMEOUT``
    (default 60). A kernel spinning on another block's write never finishes on the CPU."""
    try:
        return max(0.001, float(os.environ.get("MINIBN_SHIM_TIMEOUT", "60")))
    except ValueError:
        return 60.0


# ---- parsing the kernel signatures -------------------------------------------------------------

# Scalar C types a kernel parameter may have, and the NumPy dtype whose bytes they read.
_C_TYPES = {
    "bool": np.bool_,
    "char": np.int8,
    "signed char": np.int8,
    "unsigned char": np.uint8,
    "short": np.int16,
    "unsigned short": np.uint16,
    "int": np.int32,
    "signed": np.int32,
    "signed int": np.int32,
    "unsigned": np.uint32,
    "unsigned int": np.uint32,
    "long": np.int64,
    "long long": np.int64,
    "long long int": np.int64,
    "unsigned long": np.uint64,
    "unsigned long long": np.uint64,
    "size_t": np.uint64,
    "int32_t": np.int32,
    "uint32_t": np.uint32,
    "int64_t": np.int64,
    "uint64_t": np.uint64,
    "float": np.float32,
    "double": np.float64,
    "float2": np.float32,
    "float4": np.float32,
    "double2": np.float64,
    "int2": np.int32,
    "int4": np.int32,
}
_VECTOR_TYPES = {"float2", "float4", "double2", "int2", "int4"}  # fine behind a pointer only
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # without qualifiers or '*'
    pointer: bool


def _strip_comments(code):
    code = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group()), code, flags=re.S)
    return re.sub(r"//[^\n]*", "", code)


def parse_kernels(code):
    """``{name: [Param, ...]}`` for every ``__global__`` function in ``code``."""
    kernels = {}
    text = _strip_comments(code)
    for m in re.finditer(r"__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)\s*\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        params = []
        for raw in text[m.end():i - 1].split(","):
            tokens = [t for t in re.findall(r"[A-Za-z_]\w*|\*", raw) if t not in _QUALIFIERS]
            if not tokens or tokens == ["void"]:
                continue
            pointer = "*" in tokens
            words = [t for t in tokens if t != "*"]
            params.append(Param(words[-1], " ".join(words[:-1]), pointer))
        kernels[m.group(1)] = params
    return kernels


_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*)\s+"
    r"(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_]\w*)\s*\[\s*\]\s*;"
)


def _translate(code):
    """Point ``extern __shared__ T name[];`` at the launch's dynamic shared memory (one line each,
    so compiler messages keep the source's line numbers)."""
    return _EXTERN_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(minibn_dynamic_smem);", code)


# ---- compiling and caching ---------------------------------------------------------------------

_lock = threading.Lock()
_loaded = {}


def _compiler():
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelError(
            f"running CUDA kernels on the CPU needs a C++20 compiler (g++ >= 10); {cxx!r} was "
            "not found (set $CXX to use another)"
        )
    return cxx


_versions = {}


def _compiler_version(cxx):
    if cxx not in _versions:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
        _versions[cxx] = out.stdout.splitlines()[0] if out.stdout else cxx
    return _versions[cxx]


def cache_dir():
    """Where compiled kernels are kept (created on first use)."""
    candidates = []
    if os.environ.get("MINIBN_CACHE_DIR"):
        candidates.append(Path(os.environ["MINIBN_CACHE_DIR"]))
    candidates.append(Path.home() / ".cache" / "minibn" / "cuda-shim")
    candidates.append(Path(tempfile.gettempdir()) / f"minibn-cuda-shim-{os.getuid()}")
    for path in candidates:
        try:
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    raise KernelError(f"no writable cache directory for compiled kernels (tried {candidates})")


def _defines(options):
    """Keep the preprocessor options (-D, -U) of a CuPy/NVRTC option list; the others (arch,
    fast-math, standard) have no CPU meaning."""
    kept = []
    for opt in options:
        if opt.startswith(("-D", "-U")):
            kept.append(opt)
    return tuple(kept)


def _unit(code, kernels, label):
    # The unnamed namespace gives the kernel's functions internal linkage, so a __shared__
    # (static) variable inside an inline __device__ function is one plain object, not a COMDAT.
    lines = [f'#include "{SHIM}"', "namespace {", f'#line 1 "{label}"', _translate(code), "}", ""]
    for name in kernels:
        lines.append(
            f'extern "C" int minibn_launch_{name}(void** a, const unsigned* g, const unsigned* b, '
            "unsigned long long smem, int order, unsigned long long seed, double timeout, char* err, "
            f"int errlen) {{ return minibn_shim::launch([](void** p) {{ minibn_shim::call({name}, p); }}, "
            "a, g, b, smem, order, seed, timeout, err, errlen); }"
        )
    return "\n".join(lines) + "\n"


def _build(code, kernels, options, label):
    cxx = _compiler()
    flags = _CXXFLAGS + _defines(options)
    unit = _unit(code, kernels, label)
    key = hashlib.sha256(
        "\0".join([SHIM.read_text(), unit, " ".join(flags), _compiler_version(cxx)]).encode()
    ).hexdigest()[:32]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        target = cache_dir() / f"{key}.so"
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src = Path(tmp) / "kernel.cpp"
                src.write_text(unit)
                out = Path(tmp) / "kernel.so"
                proc = subprocess.run(
                    [cxx, *flags, str(src), "-o", str(out)], capture_output=True, text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    raise CompileError(_compile_message(proc.stderr, label))
                os.replace(out, target)  # atomic: a concurrent build of the same key is harmless
        _loaded[key] = ctypes.CDLL(str(target))
        return _loaded[key]


def _compile_message(stderr, label):
    errors = [ln for ln in stderr.splitlines() if "error" in ln and label in ln]
    shown = errors[:8] or stderr.strip().splitlines()[:12]
    return f"the kernel source does not compile ({label}):\n" + "\n".join(shown)


# ---- launching ---------------------------------------------------------------------------------

def _dim3(value, what, limits):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise KernelError(f"{what} must be an int or a tuple of up to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise KernelError(f"{what}[{axis}] = {d} is outside CUDA's range 1..{limit}")
    return dims


def _marshal(params, args, kernel):
    if not isinstance(args, (tuple, list)):
        raise KernelError(f"{kernel}: args must be a tuple, got {type(args).__name__}")
    if len(args) != len(params):
        names = ", ".join(p.name for p in params)
        raise KernelError(f"{kernel} takes {len(params)} arguments ({names}), got {len(args)}")
    keep = []
    for p, a in zip(params, args):
        want = _C_TYPES.get(p.ctype)
        if p.pointer:
            if not isinstance(a, np.ndarray):
                raise KernelError(
                    f"{kernel}: argument {p.name!r} is a {p.ctype}*, so pass a NumPy array "
                    f"(got {type(a).__name__})"
                )
            if not a.flags.c_contiguous:
                raise KernelError(
                    f"{kernel}: argument {p.name!r} must be C-contiguous (a kernel indexes raw "
                    "memory); use np.ascontiguousarray"
                )
            if want is not None and a.dtype != want:
                raise KernelError(
                    f"{kernel}: argument {p.name!r} is a {p.ctype}*, which reads "
                    f"{np.dtype(want).name} values, but the array has dtype {a.dtype}"
                )
            keep.append(ctypes.c_void_p(a.ctypes.data))
        else:
            if isinstance(a, np.ndarray):
                raise KernelError(f"{kernel}: argument {p.name!r} is a {p.ctype}, not a pointer: "
                                  "pass a NumPy scalar, not an array")
            if want is None or p.ctype in _VECTOR_TYPES:
                raise KernelError(f"{kernel}: parameter type {p.ctype!r} of {p.name!r} is not "
                                  "supported by the CPU executor (pass scalars and pointers)")
            keep.append(_scalar(a, np.dtype(want), p, kernel))
    pointers = (ctypes.c_void_p * max(len(keep), 1))()
    for i, k in enumerate(keep):
        pointers[i] = ctypes.cast(ctypes.pointer(k), ctypes.c_void_p)
    return pointers, keep


def _scalar(a, dtype, p, kernel):
    if isinstance(a, np.generic):
        if a.dtype != dtype:
            raise KernelError(
                f"{kernel}: argument {p.name!r} is a {p.ctype}; pass np.{dtype.name}(...), "
                f"got np.{a.dtype.name} (a kernel reads the argument's raw bytes)"
            )
        value = a
    elif isinstance(a, bool) or not isinstance(a, (int, float)):
        raise KernelError(f"{kernel}: argument {p.name!r} must be a number, got {type(a).__name__}")
    elif isinstance(a, float) and dtype != np.float64:
        # CuPy sends a Python float as a C double: an 8-byte value in a 4-byte float parameter.
        raise KernelError(
            f"{kernel}: argument {p.name!r} is a {p.ctype}; pass np.{dtype.name}({a!r}), not a "
            "Python float (CuPy sends a Python float as a double)"
        )
    else:
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and not info.min <= a <= info.max:
            raise KernelError(f"{kernel}: argument {p.name!r} = {a} does not fit a {p.ctype}")
        value = dtype.type(a)
    storage = np.array([value], dtype=dtype)
    return ctypes.c_byte.from_buffer(storage)  # keeps storage alive


class CpuRawKernel:
    """CuPy's ``RawKernel`` on the CPU: ``kernel(grid, block, args, shared_mem=0)``.

    Args:
        code: CUDA C source holding the kernel (``extern "C" __global__ void name(...)``).
        name: the kernel to launch.
        options: NVRTC-style options; ``-D``/``-U`` are honoured, the rest ignored.
    """

    def __init__(self, code, name, options=(), *, _module=None):
        self.code = code
        self.name = name
        self.options = tuple(options)
        self._module = _module
        params = parse_kernels(code)
        if name not in params:
            found = ", ".join(params) or "none"
            raise KernelError(f"no __global__ kernel named {name!r} in the source (found: {found})")
        self.params = params[name]

    def _lib(self):
        if self._module is None:
            self._module = CpuRawModule(self.code, self.options)
        return self._module._lib()

    def __call__(self, grid, block, args, *, shared_mem=0):
        grid3 = _dim3(grid, "grid", (2**31 - 1, 65535, 65535))
        block3 = _dim3(block, "block", (1024, 1024, 64))
        if block3[0] * block3[1] * block3[2] > 1024:
            raise KernelError(f"{self.name}: block {block3} has more than 1024 threads")
        if not 0 <= int(shared_mem) <= MAX_DYNAMIC_SHARED:
            raise KernelError(
                f"{self.name}: shared_mem={shared_mem} bytes; dynamic shared memory is limited to "
                f"{MAX_DYNAMIC_SHARED} bytes without an explicit opt-in"
            )
        pointers, keep = _marshal(self.params, args, self.name)
        launch = getattr(self._lib(), f"minibn_launch_{self.name}")
        launch.restype = ctypes.c_int
        order, seed = current_schedule()
        err = ctypes.create_string_buffer(_ERRLEN)
        with _lock:  # the shim keeps its state in globals of the library
            status = launch(
                pointers, (ctypes.c_uint * 3)(*grid3), (ctypes.c_uint * 3)(*block3),
                ctypes.c_ulonglong(int(shared_mem)), ctypes.c_int(ORDERS.index(order)),
                ctypes.c_ulonglong(seed & (2**64 - 1)), ctypes.c_double(launch_timeout()), err,
                ctypes.c_int(_ERRLEN),
            )
        del keep
        if status:
            raise KernelError(f"{self.name}: {err.value.decode(errors='replace')}")


class CpuRawModule:
    """CuPy's ``RawModule`` on the CPU: one source, several kernels, one compilation."""

    def __init__(self, code, options=(), *, label="kernel.cu"):
        self.code = code
        self.options = tuple(options)
        self.label = label
        self.kernels = parse_kernels(code)
        if not self.kernels:
            raise KernelError("the source has no __global__ kernel")
        self._handle = None

    def _lib(self):
        if self._handle is None:
            self._handle = _build(self.code, list(self.kernels), self.options, self.label)
        return self._handle

    def compile(self):
        """Compile now (otherwise the first launch does), so errors surface early."""
        self._lib()
        return self

    def get_function(self, name):
        return CpuRawKernel(self.code, name, self.options, _module=self)

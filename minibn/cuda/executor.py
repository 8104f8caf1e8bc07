"""Run CUDA C kernels on the CPU: the same source text CuPy's ``RawKernel`` runs on a GPU.

``CpuRawKernel(code, name)(grid, block, args, shared_mem=0)`` and ``CpuRawModule(code)
.get_function(name)`` mirror CuPy's ``RawKernel`` and ``RawModule``, but take NumPy arrays and
NumPy scalars. The source is compiled by g++ together with ``shim/cuda_shim.h`` and linked with
the shim's runtime (``shim/shim_runtime.cpp``), which runs every CUDA thread as a fiber and every
block in turn; the library is cached on disk under a hash of the source, the shim, the options
and the compiler version: ``$MINIBN_CACHE_DIR``, else ``~/.cache/minibn/cuda-shim``, else a temp
dir.

**The sanitizer** (on by default; ``sanitize=False`` on a call, ``with sanitize(False):`` or
``MINIBN_SANITIZE=0`` turn it off for speed) checks every memory access of the kernel, as
NVIDIA's compute-sanitizer does on a GPU: racecheck (unordered conflicting accesses to shared
and global memory, across blocks too), memcheck (accesses outside every array argument),
initcheck (reads of shared memory nothing wrote, and of arrays allocated without values by
``minibn.cuda.cpu_memory.empty``), synccheck (divergent barriers, warp collectives whose mask
names lanes that do not exist or do not take part). A finding raises ``SanitizerError`` naming
the kernel, the threads and blocks, the array and index, the source lines and a fix. Without
the sanitizer those bugs pass silently here, as they often do on a GPU until the day they don't.

The order in which threads run between barriers (and blocks run) is a parameter, ``schedule``:
``"forward"``, ``"reverse"`` or ``"shuffle"`` (seeded). A correct kernel gives the same bits under
every order (unless it adds floats atomically); the sanitizer's verdict does not depend on it.

This is a correctness tool, never a speed model: it says nothing about how fast a kernel runs on
a GPU (coalescing, bank conflicts, occupancy are all invisible), nor about inter-block
spin-waits (blocks run one after another, so a block waiting for a later one never finishes).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from minibn.cuda import cpu_memory
from minibn.cuda.sanitizer import CompileError, Context, KernelError, SanitizerError, describe

__all__ = [
    "CompileError",
    "CpuRawKernel",
    "CpuRawModule",
    "KernelError",
    "ORDERS",
    "SanitizerError",
    "sanitize",
    "schedule",
]

SHIM_DIR = Path(__file__).parent / "shim"
SHIM = SHIM_DIR / "cuda_shim.h"
RUNTIME = SHIM_DIR / "shim_runtime.cpp"
ABI = SHIM_DIR / "shim_abi.h"
ORDERS = ("forward", "reverse", "shuffle")
MAX_DYNAMIC_SHARED = 48 * 1024  # above this CUDA needs an explicit opt-in per kernel
# The kernel gets ThreadSanitizer's *instrumentation* only (a call per load and store, which the
# shim's runtime answers); debug lines let addr2line turn the calls' addresses into source lines
# (DWARF 4: binutils 2.40's addr2line can name the wrong file of a DWARF 5 line table).
_KERNEL_FLAGS = ("-std=c++20", "-O1", "-gdwarf-4", "-fPIC", "-fsanitize=thread", "-U_FORTIFY_SOURCE",
                 "-Wno-attributes")
_RUNTIME_FLAGS = ("-std=c++20", "-O2", "-fPIC", "-U_FORTIFY_SOURCE")
_LINK_FLAGS = ("-shared", "-Wl,-z,defs")


# ---- settings: schedule and sanitizer ---------------------------------------------------------

_settings = threading.local()


@contextlib.contextmanager
def schedule(order="forward", seed=0):
    """Run CPU launches inside the block with threads (and blocks) taken in ``order``.

    ``order``: ``"forward"`` (thread 0 first), ``"reverse"`` or ``"shuffle"`` (a permutation drawn
    from ``seed``, fixed per block).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    previous = getattr(_settings, "schedule", None)
    _settings.schedule = (order, int(seed))
    try:
        yield
    finally:
        _settings.schedule = previous


def current_schedule():
    """The ``(order, seed)`` CPU launches use now: ``schedule()``'s, else ``$MINIBN_SHIM_ORDER``."""
    value = getattr(_settings, "schedule", None)
    if value is not None:
        return value
    order = os.environ.get("MINIBN_SHIM_ORDER", "forward")
    return (order if order in ORDERS else "forward", 0)


@contextlib.contextmanager
def sanitize(enabled=True):
    """Turn the sanitizer on or off for CPU launches inside the block (a call's own
    ``sanitize=`` argument still wins)."""
    previous = getattr(_settings, "sanitize", None)
    _settings.sanitize = bool(enabled)
    try:
        yield
    finally:
        _settings.sanitize = previous


def current_sanitize():
    """Whether CPU launches are sanitized now: ``sanitize()``'s setting, else
    ``$MINIBN_SANITIZE`` (``0``/``off``/``false`` turn it off; on by default)."""
    value = getattr(_settings, "sanitize", None)
    if value is not None:
        return value
    return os.environ.get("MINIBN_SANITIZE", "1").strip().lower() not in ("0", "off", "false", "no")


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
_VECTOR_SIZES = {"float2": 8, "float4": 16, "double2": 16, "int2": 8, "int4": 16}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


def type_size(ctype):
    """Bytes of one element of C type ``ctype`` (0 when unknown: a struct)."""
    if ctype in _VECTOR_SIZES:
        return _VECTOR_SIZES[ctype]
    return np.dtype(_C_TYPES[ctype]).itemsize if ctype in _C_TYPES else 0


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # without qualifiers or '*'
    pointer: bool
    const: bool = False  # a pointer to const data: the kernel only reads through it


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
            every = re.findall(r"[A-Za-z_]\w*|\*", raw)
            tokens = [t for t in every if t not in _QUALIFIERS]
            if not tokens or tokens == ["void"]:
                continue
            pointer = "*" in tokens
            const = pointer and "const" in every[:every.index("*")]
            words = [t for t in tokens if t != "*"]
            params.append(Param(words[-1], " ".join(words[:-1]), pointer, const))
        kernels[m.group(1)] = params
    return kernels


_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*)\s+"
    r"(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_]\w*)\s*\[\s*\]\s*;"
)
_STATIC_SHARED = re.compile(
    r"__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:]*)\s+"
    r"(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_]\w*)\s*((?:\[[^\]]*\])*)\s*;"
)


def _translate(code):
    """Point ``extern __shared__ T name[];`` at the launch's dynamic shared memory (one line each,
    so compiler messages keep the source's line numbers)."""
    return _EXTERN_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(minibn_dynamic_smem);", code)


def _shared_declarations(code):
    """``(dynamic, static)``: the first ``extern __shared__`` array as ``(name, element size)``,
    and ``{name: (element type, [extents])}`` of the static ``__shared__`` variables, for naming
    what the sanitizer reports."""
    text = _strip_comments(code)
    dynamic = ("dynamic shared memory", 0)
    m = _EXTERN_SHARED.search(text)
    if m:
        dynamic = (m.group(2), type_size(m.group(1)))
    static = {}
    for m in _STATIC_SHARED.finditer(text):
        if text[max(0, m.start() - 7):m.start()].rstrip().endswith("extern"):
            continue
        extents = [int(e) if e.strip().isdigit() else None for e in re.findall(r"\[([^\]]*)\]", m.group(3))]
        static[m.group(2)] = (m.group(1), extents)
    return dynamic, static


# ---- compiling and caching ---------------------------------------------------------------------

_lock = threading.RLock()
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
    return tuple(opt for opt in options if opt.startswith(("-D", "-U")))


def _unit(code, kernels, label):
    # The unnamed namespace gives the kernel's functions internal linkage, so a __shared__
    # (static) variable inside an inline __device__ function is one plain object, not a COMDAT.
    lines = [f'#include "{SHIM}"', "namespace {", f'#line 1 "{label}"', _translate(code), "}", ""]
    for name in kernels:
        lines.append(
            f"MINIBN_NOSAN static void minibn_body_{name}(void** p) {{ minibn_shim::call({name}, p); }}\n"
            f'extern "C" int minibn_launch_{name}(const minibn_launch_args* a) '
            f"{{ return minibn_rt_launch(minibn_body_{name}, a); }}"
        )
    return "\n".join(lines) + "\n"


def _run(cmd, what, label=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if label is not None:
            raise CompileError(_compile_message(proc.stderr, label))
        raise KernelError(f"{what} failed:\n" + "\n".join(proc.stderr.strip().splitlines()[:12]))


def cached_build(name, key_parts, build):
    """``cache_dir() / name-KEY.ext``, KEY a hash of the strings ``key_parts`` (which must name
    everything the file depends on: source, flags, compiler version). Made by ``build(path)`` in
    a temporary directory beside it when missing, then moved into place atomically, so that
    concurrent builds of the same key are harmless."""
    key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()[:32]
    stem, ext = os.path.splitext(name)
    target = cache_dir() / f"{stem}-{key}{ext}"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / name
            build(out)
            os.replace(out, target)
    return target


def _runtime_object(cxx):
    """The shim's runtime, compiled once per compiler and source (and cached like kernels)."""
    return cached_build(
        "runtime.o",
        [RUNTIME.read_text(), ABI.read_text(), " ".join(_RUNTIME_FLAGS), _compiler_version(cxx)],
        lambda out: _run([cxx, *_RUNTIME_FLAGS, "-c", str(RUNTIME), "-o", str(out)],
                         "compiling the CPU shim's runtime"))


def _build(code, kernels, options, label):
    """``(library, metadata)``: the kernel library, loaded, and what the sanitizer's messages need."""
    cxx = _compiler()
    flags = _KERNEL_FLAGS + _defines(options)
    unit = _unit(code, kernels, label)
    key = hashlib.sha256("\0".join([SHIM.read_text(), ABI.read_text(), RUNTIME.read_text(), unit,
                                    " ".join(flags), _compiler_version(cxx)]).encode()).hexdigest()[:32]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        target = cache_dir() / f"{key}.so"
        meta_path = target.with_suffix(".json")
        if not (target.exists() and meta_path.exists()):
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                src, obj, lib = Path(tmp) / "kernel.cpp", Path(tmp) / "kernel.o", Path(tmp) / "kernel.so"
                src.write_text(unit)
                _run([cxx, *flags, "-c", str(src), "-o", str(obj)], "compiling", label)  # errors first
                runtime = _runtime_object(cxx)
                _run([cxx, *_LINK_FLAGS, str(obj), str(runtime), "-o", str(lib)], "linking the kernel")
                meta = Path(tmp) / "kernel.json"
                meta.write_text(json.dumps(_shared_symbols(lib)))
                os.replace(meta, meta_path)
                os.replace(lib, target)  # atomic: a concurrent build of the same key is harmless
        handle = ctypes.CDLL(str(target))
        _check_abi(handle)
        _loaded[key] = (handle, {"path": str(target), **json.loads(meta_path.read_text())})
        return _loaded[key]


def _shared_symbols(lib):
    """The static ``__shared__`` variables of a built library, ``[[offset, size, name], ...]``
    relative to the shim's shared-memory section, from its symbol table."""
    nm = shutil.which("nm")
    if not nm:
        return {"shared": []}
    out = subprocess.run([nm, "-S", "-C", "--defined-only", str(lib)], capture_output=True, text=True,
                         check=False).stdout
    symbols, start, stop = [], None, None
    for line in out.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 3 and parts[2] == "__start_minibn_shared":
            start = int(parts[0], 16)
        elif len(parts) == 3 and parts[2] == "__stop_minibn_shared":
            stop = int(parts[0], 16)
        elif len(parts) == 4:
            symbols.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    if start is None or stop is None:
        return {"shared": []}
    found = sorted((addr - start, size, name.split("::")[-1]) for addr, size, name in symbols
                   if start <= addr < stop and size)
    return {"shared": [list(f) for f in found]}


def _compile_message(stderr, label):
    errors = [ln for ln in stderr.splitlines() if "error" in ln and label in ln]
    shown = errors[:8] or stderr.strip().splitlines()[:12]
    return f"the kernel source does not compile ({label}):\n" + "\n".join(shown)


# ---- the launch ABI (shim_abi.h) -------------------------------------------------------------

class _Buffer(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("lo", ctypes.c_uint64),
                ("hi", ctypes.c_uint64), ("init", ctypes.c_void_p), ("param", ctypes.c_int32),
                ("is_const", ctypes.c_int32)]


class _SharedVar(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_uint64), ("size", ctypes.c_uint64)]


class _Report(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("kind", "access", "other_access", "region", "buffer",
                                              "size", "why", "other_valid")] + [
        ("offset", ctypes.c_int64),
        ("thread", ctypes.c_uint32), ("block", ctypes.c_uint32),
        ("other_thread", ctypes.c_uint32), ("other_block", ctypes.c_uint32),
        ("pc", ctypes.c_uint64), ("other_pc", ctypes.c_uint64),
        ("line", ctypes.c_int32), ("other_line", ctypes.c_int32),
        ("counts", ctypes.c_uint64 * 6),
        ("message", ctypes.c_char * 1024),
    ]


class _LaunchArgs(ctypes.Structure):
    _fields_ = [
        ("args", ctypes.c_void_p),
        ("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3),
        ("shared_mem", ctypes.c_uint64),
        ("order", ctypes.c_int32), ("sanitize", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("timeout_s", ctypes.c_double),
        ("nbuffers", ctypes.c_int32), ("nshared", ctypes.c_int32),
        ("buffers", ctypes.POINTER(_Buffer)),
        ("shared_vars", ctypes.POINTER(_SharedVar)),
        ("report", ctypes.POINTER(_Report)),
    ]


def _check_abi(handle):
    sizes = (ctypes.c_uint64 * 4)()
    handle.minibn_abi_sizes(sizes)
    want = [ctypes.sizeof(t) for t in (_Buffer, _SharedVar, _Report, _LaunchArgs)]
    if list(sizes) != want:
        raise KernelError(f"the CPU shim's structs ({list(sizes)}) do not match executor.py's ({want})")


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


def check_args(params, args, kernel, is_array=lambda a: isinstance(a, np.ndarray)):
    """Refuse arguments a kernel would misread: the count, an array for each pointer (C-contiguous,
    of the pointer's element type), a NumPy scalar of the exact C type for each scalar. Shared by
    the CPU executor and the CuPy path (``is_array`` says what counts as an array there)."""
    if not isinstance(args, (tuple, list)):
        raise KernelError(f"{kernel}: args must be a tuple, got {type(args).__name__}")
    if len(args) != len(params):
        names = ", ".join(p.name for p in params)
        raise KernelError(f"{kernel} takes {len(params)} arguments ({names}), got {len(args)}")
    for p, a in zip(params, args):
        want = _C_TYPES.get(p.ctype)
        if p.pointer:
            if not is_array(a):
                raise KernelError(
                    f"{kernel}: argument {p.name!r} is a {p.ctype}*, so pass an array "
                    f"(got {type(a).__name__})"
                )
            if not a.flags.c_contiguous:
                raise KernelError(
                    f"{kernel}: argument {p.name!r} must be C-contiguous (a kernel indexes raw "
                    "memory); use ascontiguousarray"
                )
            if want is not None and a.dtype != want:
                raise KernelError(
                    f"{kernel}: argument {p.name!r} is a {p.ctype}*, which reads "
                    f"{np.dtype(want).name} values, but the array has dtype {a.dtype}"
                )
        else:
            if is_array(a) or isinstance(a, np.ndarray):
                raise KernelError(f"{kernel}: argument {p.name!r} is a {p.ctype}, not a pointer: "
                                  "pass a NumPy scalar, not an array")
            if want is None or p.ctype in _VECTOR_SIZES:
                raise KernelError(f"{kernel}: parameter type {p.ctype!r} of {p.name!r} is not "
                                  "supported (pass scalars and pointers)")
            _scalar_value(a, np.dtype(want), p, kernel)


def _scalar_value(a, dtype, p, kernel):
    if isinstance(a, np.generic):
        if a.dtype != dtype:
            raise KernelError(
                f"{kernel}: argument {p.name!r} is a {p.ctype}; pass np.{dtype.name}(...), "
                f"got np.{a.dtype.name} (a kernel reads the argument's raw bytes)"
            )
        return a
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise KernelError(f"{kernel}: argument {p.name!r} must be a number, got {type(a).__name__}")
    if isinstance(a, float) and dtype != np.float64:
        # CuPy sends a Python float as a C double: an 8-byte value in a 4-byte float parameter.
        raise KernelError(
            f"{kernel}: argument {p.name!r} is a {p.ctype}; pass np.{dtype.name}({a!r}), not a "
            "Python float (CuPy sends a Python float as a double)"
        )
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None and not info.min <= a <= info.max:
        raise KernelError(f"{kernel}: argument {p.name!r} = {a} does not fit a {p.ctype}")
    return dtype.type(a)


def _marshal(params, args, kernel):
    """CUDA's argument array, the buffer table for the sanitizer, and what keeps them alive."""
    check_args(params, args, kernel)
    keep, buffers, names = [], [], []
    for i, (p, a) in enumerate(zip(params, args)):
        if p.pointer:
            keep.append(ctypes.c_void_p(a.ctypes.data))
            lo = hi = init = 0
            found = cpu_memory.lookup(a.ctypes.data, a.nbytes)
            if found:
                lo, hi, init = found
            buffers.append(_Buffer(a.ctypes.data, a.nbytes, lo, hi, init or None, i, int(p.const)))
            elem = type_size(p.ctype)
            names.append((p.name, elem, a.nbytes // elem if elem else a.size))
        else:
            storage = np.array([_scalar_value(a, np.dtype(_C_TYPES[p.ctype]), p, kernel)])
            keep.append(ctypes.c_byte.from_buffer(storage))  # keeps storage alive
    pointers = (ctypes.c_void_p * max(len(keep), 1))()
    for i, k in enumerate(keep):
        pointers[i] = ctypes.cast(ctypes.pointer(k), ctypes.c_void_p)
    table = (_Buffer * max(len(buffers), 1))(*buffers)
    return pointers, table, len(buffers), names, keep


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

    def _get_module(self):
        if self._module is None:
            self._module = CpuRawModule(self.code, self.options)
        return self._module

    def __call__(self, grid, block, args, *, shared_mem=0, sanitize=None):
        """Launch. ``sanitize``: ``True``/``False`` for this call; ``None`` follows
        ``minibn.cuda.executor.sanitize()`` and ``$MINIBN_SANITIZE`` (on by default)."""
        grid3 = _dim3(grid, "grid", (2**31 - 1, 65535, 65535))
        block3 = _dim3(block, "block", (1024, 1024, 64))
        if block3[0] * block3[1] * block3[2] > 1024:
            raise KernelError(f"{self.name}: block {block3} has more than 1024 threads")
        if not 0 <= int(shared_mem) <= MAX_DYNAMIC_SHARED:
            raise KernelError(
                f"{self.name}: shared_mem={shared_mem} bytes; dynamic shared memory is limited to "
                f"{MAX_DYNAMIC_SHARED} bytes without an explicit opt-in"
            )
        on = current_sanitize() if sanitize is None else bool(sanitize)
        module = self._get_module()
        lib, meta = module._lib()
        pointers, table, nbuffers, names, keep = _marshal(self.params, args, self.name)
        shared = meta.get("shared", [])
        shared_table = (_SharedVar * max(len(shared), 1))(*[_SharedVar(o, s) for o, s, _ in shared])
        report = _Report()
        order, seed = current_schedule()
        launch_args = _LaunchArgs(
            ctypes.cast(pointers, ctypes.c_void_p), (ctypes.c_uint32 * 3)(*grid3),
            (ctypes.c_uint32 * 3)(*block3), int(shared_mem), ORDERS.index(order), int(on),
            seed & (2**64 - 1), launch_timeout(), nbuffers, len(shared), table, shared_table,
            ctypes.pointer(report),
        )
        launch = getattr(lib, f"minibn_launch_{self.name}")
        launch.restype = ctypes.c_int
        with _lock:  # the shim keeps its state in globals of the library
            status = launch(ctypes.byref(launch_args))
        del keep
        if status:
            raise self._error(report, meta, module, grid3, block3, int(shared_mem), names, shared)

    def _error(self, report, meta, module, grid, block, shared_mem, names, shared):
        dynamic, static = _shared_declarations(self.code)
        shared_vars = [(name, offset, size, _element_size(static.get(name), size),
                        bool(static.get(name)) and not static[name][1]) for offset, size, name in shared]
        ctx = Context(self.name, module.label, meta["path"], grid, block, shared_mem, names,
                      shared_vars, dynamic)
        tool, message = describe(report, ctx)
        if tool is None:
            return KernelError(f"{self.name}: {message}")
        counts = {t: int(report.counts[k]) for k, t in ((1, "racecheck"), (2, "memcheck"),
                                                      (3, "initcheck"), (4, "synccheck"))}
        return SanitizerError(message, tool, counts, {
            "kernel": self.name, "thread": int(report.thread), "block": int(report.block),
            "buffer": names[report.buffer][0] if report.region == 1 and 0 <= report.buffer < len(names) else None,
        })


def _element_size(declared, size):
    """One element's bytes of a static ``__shared__`` variable of ``size`` bytes."""
    if not declared:
        return 0
    ctype, extents = declared
    if type_size(ctype):
        return type_size(ctype)
    if extents and all(e for e in extents):
        return size // prod(extents)
    return size if not extents else 0


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

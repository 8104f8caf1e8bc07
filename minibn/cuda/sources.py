"""The CUDA C sources of the kernels, as text: the one input both runtimes compile.

``source(name)`` reads ``kernels/<name>.cu`` and inlines its ``#include "..."`` lines (each file
once), so the text handed to ``cupy.RawModule``, to NVRTC and to the CPU executor is the same
self-contained string, with no include paths to configure. Each inlined header is framed by
``#line`` directives, so compiler errors and the sanitizer's reports name the file and line a
person would open (``welford_block.cuh:12``, ``k5_forward.cu:30``), not a line of the combined text.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

KERNEL_DIR = Path(__file__).parent / "kernels"

__all__ = ["KERNEL_DIR", "inline_includes", "kernel_files", "source"]

# [ \t], not \s: an include must not swallow the blank lines around it (line numbers would shift).
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


def kernel_files():
    """Names (without ``.cu``) of the kernel files, in the order of the progression."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))


@lru_cache(maxsize=None)
def source(name):
    """Self-contained CUDA C text of ``kernels/<name>.cu``."""
    path = KERNEL_DIR / f"{name}.cu"
    if not path.exists():
        raise ValueError(f"no kernel file {name!r}; available: {', '.join(kernel_files())}")
    return inline_includes(path.read_text(), path.name)


def inline_includes(code, label="kernel.cu", seen=None):
    """``code`` with each ``#include "name"`` replaced by ``kernels/<name>`` (once per file), so
    a learner's kernel can include the course's headers (``welford.cuh``) on either runtime."""
    seen = set() if seen is None else seen
    seen.add(label)

    def include(m):
        target = KERNEL_DIR / m.group(1)
        if target.name in seen:
            return ""
        if not target.is_file():
            headers = ", ".join(sorted(p.name for p in KERNEL_DIR.glob("*.cuh")))
            raise ValueError(f"{label} includes {m.group(1)!r}; the headers available are {headers}")
        body = inline_includes(target.read_text(), target.name, seen).rstrip("\n")
        resume = code.count("\n", 0, m.start()) + 2  # the line after the #include
        return f'#line 1 "{target.name}"\n{body}\n#line {resume} "{label}"'

    return _INCLUDE.sub(include, code)

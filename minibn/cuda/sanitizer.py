"""Errors of the CPU executor, and the sanitizer's findings worded for a learner.

The runtime (``shim/shim_runtime.cpp``) fills a ``minibn_report`` with numbers: which access,
which thread and block, which buffer and byte, which code address. This module turns it into a
sentence in compute-sanitizer's terms (racecheck, memcheck, initcheck, synccheck) that names the
kernel, the threads and blocks, the array and index, the source lines and what to change, e.g.

    racecheck: race on s_sum[3] (shared memory) in bn_stats_k1: thread (5,0,0) wrote it at
    k1.cu:24 and thread (37,0,0) read it at k1.cu:24, in the same barrier interval (no
    __syncthreads() between them). Put a __syncthreads() between ...

Code addresses become ``file:line`` through ``addr2line`` (binutils, installed with g++), run
only when there is something to report.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["CompileError", "KernelError", "SanitizerError", "TOOLS", "describe"]


class KernelError(RuntimeError):
    """A kernel launch failed: bad arguments, a divergent barrier, a deadlock."""


class CompileError(KernelError):
    """g++ rejected the kernel source; the message holds the compiler's first errors."""


class SanitizerError(KernelError):
    """The sanitizer found a GPU bug. ``tool`` is compute-sanitizer's name for its class:
    ``"racecheck"``, ``"memcheck"``, ``"initcheck"`` or ``"synccheck"``; ``counts`` maps each
    tool to how many errors of that class the launch had (the message describes the first)."""

    def __init__(self, message, tool, counts, details=None):
        super().__init__(message)
        self.tool = tool
        self.counts = counts
        self.details = details or {}


# Codes shared with shim_abi.h.
TOOLS = {1: "racecheck", 2: "memcheck", 3: "initcheck", 4: "synccheck", 5: None}
READ, WRITE, ATOMIC = 1, 2, 3
GLOBAL, SHARED_STATIC, SHARED_DYNAMIC = 1, 2, 3
SAME_BLOCK, SAME_WARP, CROSS_BLOCK, NO_ACQUIRE, NO_RELEASE = 1, 2, 3, 4, 5


@dataclass
class Context:
    """What the executor knows about a launch, for naming things."""

    kernel: str
    label: str
    library: str
    grid: tuple
    block: tuple
    shared_mem: int
    buffers: list  # per buffer: (name, element size or 0, element count)
    shared_vars: list = field(default_factory=list)  # (name, offset, size, element size or 0, scalar)
    dynamic: tuple = ("dynamic shared memory", 0)  # (name, element size or 0)


def _xyz(linear, dims):
    x = linear % dims[0]
    y = (linear // dims[0]) % dims[1]
    z = linear // (dims[0] * dims[1])
    return f"({x},{y},{z})"


def _who(tid, block, ctx, with_block):
    text = f"thread {_xyz(tid, ctx.block)}"
    return text + f" of block {_xyz(block, ctx.grid)}" if with_block else text


def _index(offset, elem):
    if elem <= 0:
        return f"byte {offset}"
    index, rest = divmod(offset, elem)
    return f"{index}" if rest == 0 else f"{index} (byte {rest} of the element)"


def _target(rep, ctx):
    """``(name[index], what space, element size, name)`` of the access in ``rep``."""
    if rep.region == GLOBAL and 0 <= rep.buffer < len(ctx.buffers):
        name, elem, _ = ctx.buffers[rep.buffer]
        elem = elem or rep.size
        return f"{name}[{_index(rep.offset, elem)}]", "global memory", elem, name
    if rep.region == SHARED_STATIC:
        if 0 <= rep.buffer < len(ctx.shared_vars):
            name, start, size, elem, scalar = ctx.shared_vars[rep.buffer]
            elem = elem or rep.size
            if scalar and rep.offset - start < size:
                return name, "shared memory", elem, name
            return f"{name}[{_index(rep.offset - start, elem)}]", "shared memory", elem, name
        return f"shared memory byte {rep.offset}", "shared memory", rep.size, "shared memory"
    if rep.region == SHARED_DYNAMIC:
        name, elem = ctx.dynamic
        elem = elem or rep.size
        return f"{name}[{_index(rep.offset, elem)}]", "dynamic shared memory", elem, name
    return f"address {rep.offset:#x}", "memory", rep.size, "memory"


_VERBS = {READ: "read it", WRITE: "wrote it", ATOMIC: "updated it atomically"}
_NOUN = {READ: "read", WRITE: "write", ATOMIC: "atomic update"}


def describe(rep, ctx):
    """``(tool, message)`` for a filled report."""
    tool = TOOLS.get(rep.kind)
    if rep.message:
        text = rep.message.decode(errors="replace")
        return tool, (f"{tool}: in {ctx.kernel}: {text}" if tool else text) + _also(rep, tool)
    lines = _resolve(ctx.library, tuple(p for p in (rep.pc, rep.other_pc) if p))
    if tool == "racecheck":
        return tool, _race(rep, ctx, lines) + _also(rep, tool)
    if tool == "memcheck":
        return tool, _memcheck(rep, ctx, lines) + _also(rep, tool)
    if tool == "initcheck":
        return tool, _initcheck(rep, ctx, lines) + _also(rep, tool)
    return tool, f"{ctx.kernel}: the launch failed (report kind {rep.kind})"


def _race(rep, ctx, lines):
    target, space, _, _ = _target(rep, ctx)
    cross = rep.other_block != rep.block
    first = _who(rep.other_thread, rep.other_block, ctx, cross or rep.region == GLOBAL)
    second = _who(rep.thread, rep.block, ctx, cross or rep.region == GLOBAL)
    a = f"{first} {_VERBS[rep.other_access]} at {_where(rep.other_pc, rep.other_line, ctx, lines)}"
    b = f"{second} {_VERBS[rep.access]} at {_where(rep.pc, rep.line, ctx, lines)}"
    relation, fix = {
        SAME_BLOCK: (", in the same barrier interval (no __syncthreads() between them)",
                     "Put a __syncthreads() between the write and the other access, or make the "
                     "update atomic (atomicAdd)."),
        SAME_WARP: (", lanes of one warp with no __syncwarp() or __syncthreads() between them (a "
                    "warp's lanes do not run in lockstep)",
                    "Put a __syncthreads() between the write and the other access (a __syncwarp() is "
                    "enough when only the lanes of one warp share these values), or make the update "
                    "atomic (atomicAdd)."),
        CROSS_BLOCK: ("; they are in different blocks, which a GPU runs in no fixed order, and "
                      "nothing orders these accesses",
                      "Use atomicAdd for a total that every block adds to, or write one partial per "
                      "block and combine the partials in a second kernel, or in the last block to "
                      "finish: write, __threadfence(), take a ticket with atomicAdd on a counter, and "
                      "in the block that draws the last ticket __threadfence() again before reading."),
        NO_ACQUIRE: ("; the reader's atomic saw the writer's __threadfence() + atomic (the ticket), "
                     "but no __threadfence() follows that atomic in the reading thread, so its reads "
                     "may still see old values",
                     "Add __threadfence() right after the atomicAdd that takes the ticket, before "
                     "__syncthreads() and before reading the other blocks' values."),
        NO_RELEASE: ("; the writing thread took its ticket (an atomic) with no __threadfence() between "
                     "this write and the atomic, so the write is not published with the ticket",
                     "Add __threadfence() after writing the value and before the atomicAdd that takes "
                     "the ticket (and another right after the atomic in the block that reads)."),
    }.get(rep.why, ("", ""))
    more = rep.counts[1] - 1
    tail = f" ({more} more hazard{'s' if more > 1 else ''} in this launch.)" if more > 0 else ""
    return (f"racecheck: race on {target} ({space}) in {ctx.kernel}: {a} and {b}{relation}. "
            f"{fix}{tail}")


def _bounds(rep, ctx):
    if rep.region == GLOBAL and 0 <= rep.buffer < len(ctx.buffers):
        name, elem, count = ctx.buffers[rep.buffer]
        elem = elem or rep.size
        index = rep.offset // elem
        if index < 0:
            where = "before its first element"
        elif index == count:
            where = "one past the end"
        elif index > count:
            where = f"{index - count + 1} elements past the end"
        else:
            where = "reaching past the end"  # starts inside, straddles the end (a wide load)
        return f"{name} has {count} element{'s' if count != 1 else ''}: index {index} is {where}"
    if rep.region == SHARED_DYNAMIC:
        name, elem = ctx.dynamic
        elem = elem or rep.size
        return (f"the launch gave shared_mem={ctx.shared_mem} bytes, {ctx.shared_mem // elem} "
                f"element{'s' if ctx.shared_mem // elem != 1 else ''} of {elem} bytes, so {name} ends "
                f"before index {rep.offset // elem}")
    if rep.region == SHARED_STATIC:
        return "the access is outside every __shared__ variable"
    return "the address belongs to no array of the launch"


def _memcheck(rep, ctx, lines):
    target, space, _, _ = _target(rep, ctx)
    who = _who(rep.thread, rep.block, ctx, True)
    fix = ("Check the index against the array's length (`if (i < n)`) and the loop bounds (`<`, not "
           "`<=`).")
    if rep.region == SHARED_DYNAMIC:
        fix = "Index only the dynamic shared memory the launch gives, or launch with more shared_mem."
    return (f"memcheck: out-of-bounds {_NOUN[rep.access]} of {target} ({space}) in {ctx.kernel} by "
            f"{who} at {_where(rep.pc, rep.line, ctx, lines)}: {_bounds(rep, ctx)}. The access was "
            f"stopped before it happened (on a GPU: an illegal address error, or silently another "
            f"array's data). {fix}")


def _initcheck(rep, ctx, lines):
    target, space, elem, name = _target(rep, ctx)
    who = _who(rep.thread, rep.block, ctx, rep.region == GLOBAL)
    what = "atomic update" if rep.access == ATOMIC else "read"
    at = _where(rep.pc, rep.line, ctx, lines)
    if rep.region == GLOBAL:
        why = (f"{name} was allocated without values (like cupy.empty) and nothing has written this "
               "element yet")
        fix = ("Write it before reading it, or allocate it with zeros."
               if rep.access != ATOMIC else "An atomic adds to the value already there: zero it first.")
    else:
        why = f"no thread of block {_xyz(rep.block, ctx.grid)} wrote it before"
        fix = ("Write every slot that is read (threads with nothing to add store the identity, e.g. "
               "0.0f), or read only the slots that were written."
               if rep.access != ATOMIC else
               "An atomic adds to the value already there: have one thread zero it, then __syncthreads().")
    return (f"initcheck: {what} of uninitialized {target} ({space}) in {ctx.kernel} by {who} at "
            f"{at}: {why}. {fix}")


def _also(rep, tool):
    others = [(TOOLS[k], int(rep.counts[k])) for k in (1, 2, 3, 4)
              if TOOLS[k] != tool and rep.counts[k]]
    if not others:
        return ""
    return " Also found: " + ", ".join(f"{n} {t} error{'s' if n > 1 else ''}" for t, n in others) + "."


# ---- code addresses to source lines ------------------------------------------------------------

def _where(pc, line, ctx, lines):
    frames = lines.get(pc) if pc else None
    if frames:
        file, ln = frames[0][1], frames[0][2]
        outer = next((f for f in frames[1:] if f[1] == ctx.label), None)
        if file != ctx.label and outer:
            return f"{file}:{ln} (inlined into {outer[1]}:{outer[2]})"
        return f"{file}:{ln}"
    return f"line {line}" if line else "an unknown line"


_FRAME = re.compile(r"^(?:0x[0-9a-f]+: )?(?: \(inlined by\) )?(.*?) at (.*?):(\d+)")


@lru_cache(maxsize=256)
def _resolve(library, pcs):
    """``{pc: [(function, file, line), ...]}``, innermost frame first."""
    tool = shutil.which("addr2line")
    if not pcs or not tool:
        return {}
    # A return address points after the call: step back into the instruction that made it.
    args = [hex(p - 1) for p in pcs]
    try:
        out = subprocess.run([tool, "-e", library, "-a", "-p", "-f", "-C", "-i", *args],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found, current = {}, None
    for raw in out.splitlines():
        m = re.match(r"^0x([0-9a-f]+):", raw)
        if m:
            current = int(m.group(1), 16) + 1
            found[current] = []
        f = _FRAME.match(raw)
        if f and current is not None:
            found[current].append((f.group(1), os.path.basename(f.group(2)), int(f.group(3))))
    return {pc: frames for pc, frames in found.items() if frames}

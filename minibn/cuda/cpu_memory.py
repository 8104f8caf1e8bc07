"""Device-like arrays for the CPU executor: what ``cupy.empty``/``cupy.asarray`` give on a GPU.

NumPy arrays work as kernel arguments as they are. These helpers give the sanitizer more to
check, the way ``cudaMalloc`` memory does on a GPU:

- every array starts on a 256-byte boundary (as ``cudaMalloc``'s do) and has a red zone of
  poisoned bytes on either side, so an access just past either end is named exactly
  (``out[64]``, one past the end of ``out``), never mistaken for a neighbouring array;
- ``empty``/``empty_like`` are poisoned (all bits set: NaN for floats, -1 for ints) and remember
  which bytes a kernel has written: reading a byte before anything wrote it is an initcheck
  error under the sanitizer, as reading ``cupy.empty`` memory would be on a GPU;
- ``zeros`` and ``to_device`` (a copy of existing values, like ``cupy.asarray``) count as written.

Writes from NumPy (``a[...] = 1``) are invisible to the record: fill an ``empty`` array with a
kernel, or allocate it with ``zeros``/``to_device``.
"""
from __future__ import annotations

import collections
import ctypes
import itertools
import threading
import weakref
from dataclasses import dataclass
from math import prod

import numpy as np

__all__ = ["ALIGN", "RED_ZONE", "empty", "empty_like", "lookup", "mark_written", "to_device", "zeros"]

ALIGN = 256
RED_ZONE = 512  # bytes of poison on each side


@dataclass
class Allocation:
    lo: int  # first byte of the front red zone
    hi: int  # one past the back red zone
    data: int  # first byte of the array
    nbytes: int
    init: np.ndarray | None  # one byte per array byte, 1 = written; None: all written


_live = {}
_keys = itertools.count()
_lock = threading.Lock()
# Keys of allocations whose memory is gone, dropped from _live by the lock's next holder. Their
# finalizers run whenever the garbage collector does, also inside this module's own locked
# sections, so they must not take the lock (that deadlocked); deque.append needs none.
_freed = collections.deque()


def _allocate(shape, dtype, initialized):
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    nbytes = prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 2 * RED_ZONE + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    raw.fill(0xFF)
    body = raw[start + RED_ZONE:start + RED_ZONE + nbytes]
    array = body.view(dtype).reshape(shape)
    lo = raw.ctypes.data + start
    alloc = Allocation(lo, lo + nbytes + 2 * RED_ZONE, lo + RED_ZONE, nbytes,
                       None if initialized else np.zeros(nbytes, np.uint8))
    key = next(_keys)
    with _lock:
        _drop_freed()
        _live[key] = alloc
    # The record must go with the memory: a later NumPy array at the same address is not ours.
    weakref.finalize(raw, _freed.append, key)
    return array


def _drop_freed():
    """With the lock held: forget the allocations freed since. Memory is freed, and its key
    queued, before anything else can be allocated at its address."""
    while _freed:
        _live.pop(_freed.popleft(), None)


def empty(shape, dtype=np.float32):
    """A poisoned array whose bytes count as unwritten until a kernel writes them."""
    return _allocate(shape, dtype, initialized=False)


def empty_like(a):
    return empty(np.shape(a), np.asarray(a).dtype)


def zeros(shape, dtype=np.float32):
    out = _allocate(shape, dtype, initialized=True)
    out[...] = 0
    return out


def to_device(a):
    """A copy of ``a`` in device-like memory (aligned, red zones), all of it written."""
    a = np.asarray(a)
    out = _allocate(a.shape, a.dtype, initialized=True)
    out[...] = a
    return out


def lookup(address, nbytes):
    """``(lo, hi, init_address)`` of the allocation holding ``[address, address + nbytes)``, or
    ``None`` for memory these helpers did not allocate. ``init_address`` is 0 when every byte
    counts as written, else the address of the record's byte for ``address``."""
    with _lock:
        _drop_freed()
        for alloc in _live.values():
            if alloc.data <= address and address + nbytes <= alloc.data + alloc.nbytes:
                init = 0 if alloc.init is None else alloc.init.ctypes.data + (address - alloc.data)
                return alloc.lo, alloc.hi, init
    return None


def mark_written(a):
    """Count every byte of ``a`` (an ``empty`` array, or a view of one) as written: after
    filling it from NumPy, say."""
    a = np.asarray(a)
    found = lookup(a.ctypes.data, a.nbytes)
    if found and found[2]:
        ctypes.memset(found[2], 1, a.nbytes)

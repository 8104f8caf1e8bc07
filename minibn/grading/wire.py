"""What crosses the boundary between the grader and the sandboxed learner process: plain data.

Messages are length-prefixed JSON (8-byte big-endian length, then UTF-8 JSON), never pickles.
Values are ``None``, booleans, numbers, strings, lists, tuples, string-keyed dicts, NumPy arrays
and scalars of a numeric or boolean dtype (raw bytes, base64), and the named tuples minibn
defines (``BatchNormCache``), nested at most ``MAX_DEPTH`` deep. Anything else a learner's
function returns travels as its type's name only and arrives as an ``Opaque`` stand-in, so a
check still says "must be a NumPy ndarray, got Anything". ``decode`` validates everything it
reads (dtype, shape against the byte count, sizes) and raises ``WireError`` otherwise.
"""
from __future__ import annotations

import base64
import json
import math
import struct
import sys

import numpy as np

MAX_MESSAGE = 256 * 2**20  # bytes of one message
MAX_DEPTH = 16
MAX_ITEMS = 100_000  # elements of one list/tuple/dict
MAX_STR = 2**20
_KINDS = "biufc"


class WireError(ValueError):
    pass


class Opaque:
    """Stands for a value that cannot cross the boundary (its type's name is all that does)."""

    def __repr__(self):
        return f"<a {type(self).__name__} object from the learner's process>"


def _opaque(name):
    name = str(name)[:100] if str(name)[:100].isidentifier() else "object"
    return type(name, (Opaque,), {})()


def encode(value, depth=0):
    if depth > MAX_DEPTH:
        raise WireError(f"value nested more than {MAX_DEPTH} deep")
    if value is None or isinstance(value, (bool, str)) and type(value) in (bool, str):
        if isinstance(value, str) and len(value) > MAX_STR:
            raise WireError(f"string of {len(value)} characters (limit {MAX_STR})")
        return value
    if type(value) is int:
        return {"__int__": str(value)} if abs(value) >= 2**53 else value
    if type(value) is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if type(value) is complex:
        return {"__complex__": [repr(value.real), repr(value.imag)]}
    if type(value) is np.ndarray and value.dtype.kind in _KINDS:
        if value.nbytes * 4 // 3 > MAX_MESSAGE:  # refuse before building a copy of it
            raise WireError(f"an array of {value.nbytes} bytes (limit {MAX_MESSAGE * 3 // 4})")
        data = np.ascontiguousarray(value)
        return {"__nd__": [data.dtype.str, list(data.shape), base64.b64encode(data.tobytes()).decode()]}
    if isinstance(value, np.generic) and type(value).__module__ == "numpy" and value.dtype.kind in _KINDS:
        return {"__np__": [value.dtype.str, base64.b64encode(value.tobytes()).decode()]}
    if type(value) in (list, tuple):
        if len(value) > MAX_ITEMS:
            raise WireError(f"sequence of {len(value)} items (limit {MAX_ITEMS})")
        items = [encode(v, depth + 1) for v in value]
        return items if type(value) is list else {"__tuple__": items}
    if isinstance(value, tuple) and hasattr(type(value), "_fields") and type(value).__module__.startswith("minibn."):
        return {"__nt__": [f"{type(value).__module__}:{type(value).__qualname__}",
                           [encode(v, depth + 1) for v in value]]}
    if type(value) is dict and all(type(k) is str for k in value) and len(value) <= MAX_ITEMS:
        return {"__dict__": [[k, encode(v, depth + 1)] for k, v in value.items()]}
    return {"__opaque__": type(value).__name__}


def decode(data, depth=0):
    if depth > MAX_DEPTH:
        raise WireError("value nested too deep")
    if data is None or type(data) in (bool, int, float):
        return data
    if type(data) is str:
        if len(data) > MAX_STR:
            raise WireError("string too long")
        return data
    if type(data) is list:
        return [decode(v, depth + 1) for v in data[:MAX_ITEMS + 1]] if len(data) <= MAX_ITEMS else _too_many()
    if type(data) is not dict or len(data) != 1:
        raise WireError(f"not a value: {type(data).__name__}")
    (tag, body), = data.items()
    if tag == "__nd__":
        dtype, shape, raw = _checked_array(body)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if tag == "__np__":
        if not (type(body) is list and len(body) == 2 and type(body[1]) is str):
            raise WireError("bad scalar")
        dtype = _dtype(body[0])
        raw = base64.b64decode(body[1], validate=True)
        if len(raw) != dtype.itemsize:
            raise WireError("bad scalar size")
        return np.frombuffer(raw, dtype=dtype)[0]
    if tag == "__int__" and type(body) is str and len(body) < 5000:
        return int(body)
    if tag == "__float__" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "__complex__" and type(body) is list and len(body) == 2:
        return complex(float(body[0]), float(body[1]))
    if tag == "__tuple__" and type(body) is list:
        return tuple(decode(body, depth))
    if tag == "__dict__" and type(body) is list and len(body) <= MAX_ITEMS:
        out = {}
        for item in body:
            if not (type(item) is list and len(item) == 2 and type(item[0]) is str):
                raise WireError("bad dict item")
            out[item[0]] = decode(item[1], depth + 1)
        return out
    if tag == "__nt__" and type(body) is list and len(body) == 2 and type(body[0]) is str:
        cls = _named_tuple(body[0])
        items = decode(body[1], depth)
        if cls is None or not isinstance(items, list) or len(items) != len(cls._fields):
            return _opaque(body[0].rpartition(".")[2])
        return cls(*items)
    if tag == "__opaque__":
        return _opaque(body)
    raise WireError(f"unknown tag {str(tag)[:40]!r}")


def _too_many():
    raise WireError("too many items")


def _dtype(text):
    if type(text) is not str or len(text) > 8:
        raise WireError("bad dtype")
    try:
        dtype = np.dtype(text)
    except TypeError as err:
        raise WireError(f"bad dtype {text!r}") from err
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"dtype {dtype} is not allowed")
    return dtype


def _checked_array(body):
    if not (type(body) is list and len(body) == 3 and type(body[1]) is list and type(body[2]) is str):
        raise WireError("bad array")
    dtype = _dtype(body[0])
    shape = body[1]
    if len(shape) > 32 or not all(type(s) is int and s >= 0 for s in shape):
        raise WireError("bad array shape")
    raw = base64.b64decode(body[2], validate=True)
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise WireError("array shape does not match its data")
    return dtype, tuple(shape), raw


def _named_tuple(qualified):
    module, _, name = qualified.partition(":")
    mod = sys.modules.get(module) if module.startswith("minibn.") else None
    if mod is None and module.startswith("minibn."):
        try:
            import importlib

            mod = importlib.import_module(module)
        except ImportError:
            return None
    cls = getattr(mod, name, None) if mod is not None and name.isidentifier() else None
    return cls if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields") else None


# ---------------------------------------------------------------- framing

def send(stream, message):
    data = json.dumps(message, allow_nan=False).encode()
    if len(data) > MAX_MESSAGE:
        raise WireError(f"message of {len(data)} bytes (limit {MAX_MESSAGE})")
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def read_exactly(stream, n):
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(stream, limit=MAX_MESSAGE):
    (size,) = struct.unpack(">Q", read_exactly(stream, 8))
    if size > limit:
        raise WireError(f"a message of {size} bytes (limit {limit})")
    try:
        message = json.loads(read_exactly(stream, size))
    except ValueError as err:
        raise WireError(f"not JSON: {err}") from None
    if type(message) is not dict:
        raise WireError("a message must be an object")
    return message

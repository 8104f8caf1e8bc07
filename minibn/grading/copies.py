"""Exact copies: a learner function whose compiled code *is* minibn's reference or the
instructor's solution, whatever file name or docstring it was compiled with.

``fingerprint(code)`` hashes what a function computes and names: its bytecode, its constants
(nested code included, the docstring left out), the global and attribute names it uses and its
local names; not its name, file, line numbers or docstring. Two functions with the same
fingerprint were compiled from the same source up to comments, blank lines and the docstring.
Renaming a variable changes it: near-copies are for ``similarity`` (review, never a zero).
"""
from __future__ import annotations

import ast
import hashlib
import types


def fingerprint(code):
    parts = []

    def walk(co, top):
        consts = list(co.co_consts)
        if top and consts and (consts[0] is None or type(consts[0]) is str):
            consts = consts[1:]  # the docstring's slot (None when there is none)
        parts.append(co.co_code)
        parts.append(repr((co.co_argcount, co.co_posonlyargcount, co.co_kwonlyargcount, co.co_names,
                           co.co_varnames, co.co_freevars, co.co_cellvars)).encode())
        for c in consts:
            if isinstance(c, types.CodeType):
                walk(c, False)
            else:
                parts.append(_const(c))

    walk(code, True)
    return hashlib.sha256(b"\x00".join(parts)).hexdigest()


def _const(c):
    if isinstance(c, frozenset):
        return ("frozenset" + repr(sorted(map(repr, c)))).encode()
    if isinstance(c, tuple):
        return b"(" + b",".join(_const(x) for x in c) + b")"
    return repr(c).encode()


def fingerprints_in_source(source, names):
    """``{name: fingerprint}`` for the top-level functions called ``names`` in ``source``."""
    try:
        module = compile(source, "<source>", "exec", dont_inherit=True)
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    wanted = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))} & set(names)
    found = {}
    for c in module.co_consts:
        if isinstance(c, types.CodeType) and c.co_name in wanted:
            found[c.co_name] = fingerprint(c)
    return found


def function_fingerprint(fn):
    for _ in range(10):
        fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    return fingerprint(code) if isinstance(code, types.CodeType) else None

"""The learner's side of the re-grade: runs in the sandbox, only computes, never judges.

``python -I -m minibn.grading.learner_side``, started by ``minibn.grading.verdict`` with pipes on
stdin and stdout (``wire`` messages). It runs the learner's cells, then answers requests:

- ``get NAME``: what the name is (a function, or a value that can cross the boundary);
- ``call NAME ARGS KWARGS``: call the learner's function, return what it returned, the arguments
  it changed in place, and what this process noticed (patched modules, calls into minibn's
  reference, a removed profile hook);
- ``compute NAME MODULE EXERCISE WHICH INDEX SEED``: for an object that is not data (a class, a
  function of a model), run the exercise's ``compute`` half on it and return the answers;
- ``bye``.

Everything this process says comes from a process the learner controls, so the grader treats it
as the learner's answer, never as a verdict: the tests, the cases (hidden ones from the secret,
which never enters here) and the comparisons run in the grader. What it reports about itself
(provenance, tracing, patches, fingerprints) can only take marks away.
"""
from __future__ import annotations

import inspect
import os
import signal
import sys
from pathlib import Path


class _CallTimeout(BaseException):
    """Raised by the alarm; a BaseException so ``except Exception`` in learner code cannot swallow it."""


def _reference_files():
    """Files of minibn's reference implementations (not the checks, course or grading code)."""
    import minibn

    root = Path(minibn.__file__).parent
    skip = {"checks", "grading", "widgets", "experiments"}
    return {str(p) for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in skip and p.name != "course.py"}


class ModuleGuard:
    """Snapshot of numpy's and minibn's module dictionaries; ``restore`` undoes and names changes."""

    PREFIXES = ("numpy", "minibn", "builtins")

    def __init__(self):
        self.modules = {name: mod for name, mod in list(sys.modules.items())
                        if mod is not None and name.split(".")[0] in self.PREFIXES}
        self.snapshot = {name: dict(vars(mod)) for name, mod in self.modules.items()}

    def restore(self):
        changed = []
        for name, mod in self.modules.items():
            now, then = vars(mod), self.snapshot[name]
            mine = []
            for key in set(now) | set(then):
                if key not in then:
                    if getattr(now[key], "__name__", None) == f"{name}.{key}":
                        continue  # a submodule imported lazily, not a patch
                    mine.append(f"{name}.{key} added")
                elif now.get(key, _MISSING) is not then[key]:
                    mine.append(f"{name}.{key} replaced")
            if mine:  # only this module is reset, not every later one
                now.clear()
                now.update(then)
                changed += mine
        return changed


_MISSING = object()


class Server:
    def __init__(self, inp, out):
        from minibn.grading import wire

        self.wire, self.inp, self.out = wire, inp, out
        self.namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        self.tag = f"<submission {os.urandom(6).hex()}"
        self.timeout = 60.0
        self.reference_files = set()
        self.learner_functions = []
        self.guard = None
        self.cases = {}  # (module, exercise, which, seed) -> the cases compute runs on

    def timed(self, fn):
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return None, fn()
        except _CallTimeout:
            return f"timed out after {self.timeout:g} s", None
        except BaseException as err:  # the learner's error, SystemExit included
            return err, None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def run_cells(self, message):
        self.timeout = float(message["timeout"])
        self.learner_functions = list(message["learner_functions"])
        self.reference_files = _reference_files()
        self.guard = ModuleGuard()
        cells, flags = [], []
        for cell in message["cells"]:
            code = compile(cell["source"], f"{self.tag} {cell['label']}>", "exec") if cell["source"] else None
            error, _ = self.timed(lambda: exec(code, self.namespace))
            cells.append({"label": cell["label"], "error": _describe(error)})
            changed = self.guard.restore()
            if changed:
                flags.append({"kind": "tamper", "detail": f"cell {cell['label']} patched "
                              + ", ".join(sorted(changed)[:5])})
        return {"cells": cells, "flags": flags, "functions": self.describe_functions()}

    def describe_functions(self):
        from minibn.grading.copies import function_fingerprint

        out = {}
        for name in self.learner_functions:
            fn = self.namespace.get(name)
            if fn is None:
                continue
            inner = fn
            for _ in range(10):
                inner = getattr(inner, "__wrapped__", inner)
            if isinstance(inner, type):  # a class: where its own methods were compiled
                methods = [getattr(v, "__func__", v) for v in vars(inner).values()]
                files = {m.__code__.co_filename for m in methods if hasattr(m, "__code__")}
                mine = bool(files) and all(f.startswith(self.tag) for f in files)
                origin = "the notebook" if mine else (sorted(f for f in files if not f.startswith(self.tag))
                                                      or [f"{inner.__module__} (no method of its own)"])[0]
                out[name] = {"from_notebook": mine, "origin": origin, "fingerprint": None}
                continue
            code = getattr(inner, "__code__", None)
            origin = getattr(code, "co_filename", None) or type(fn).__name__
            out[name] = {"from_notebook": bool(code is not None and str(origin).startswith(self.tag)),
                         "origin": str(origin) if not str(origin).startswith(self.tag) else "the notebook",
                         "fingerprint": function_fingerprint(fn)}
        return out

    def get(self, message):
        name = message["name"]
        if name not in self.namespace:
            return {"kind": "missing"}
        value = self.namespace[name]
        if inspect.isfunction(value):
            return {"kind": "function"}
        if callable(value) or isinstance(value, str):  # a class, a kernel's source: not plain data
            return {"kind": "object", "callable": callable(value)}
        try:
            return {"kind": "value", "value": self.wire.encode(value)}
        except self.wire.WireError as err:
            return {"kind": "value", "value": {"__opaque__": type(value).__name__}, "note": str(err)}

    def traced(self, thunk):
        """Run ``thunk`` (which calls learner code) under the alarm and the reference tracer;
        ``(error, result, notes)``."""
        hits = []
        tag, files, watched = self.tag, self.reference_files, set(self.learner_functions)

        def profile(frame, event, arg):
            if event == "call" and frame.f_code.co_filename in files and frame.f_code.co_name in watched:
                caller = frame.f_back
                while caller is not None:
                    if caller.f_code.co_filename.startswith(tag):
                        hits.append(frame.f_code.co_name)
                        return
                    caller = caller.f_back

        def run():
            sys.setprofile(profile)
            try:
                return thunk()
            finally:
                hooked = sys.getprofile() is profile
                sys.setprofile(None)
                if not hooked:
                    hits.append("(the profile hook was removed)")

        error, result = self.timed(run)
        return error, result, {"hits": sorted(set(hits)), "tamper": self.guard.restore()}

    @staticmethod
    def _failed(error, notes):
        return {"ok": False, "type": type(error).__name__ if not isinstance(error, str) else "TimeoutError",
                "error": _describe(error), **notes}

    def call(self, message):
        fn = self.namespace.get(message["name"])
        if not callable(fn):
            return {"ok": False, "type": "TypeError", "error": f"{message['name']} is not callable"}
        args = [self.wire.decode(a) for a in message["args"]]
        kwargs = {k: self.wire.decode(v) for k, v in message["kwargs"].items()}
        before = [a.copy() if type(a).__name__ == "ndarray" else None for a in args]
        error, result, notes = self.traced(lambda: fn(*args, **kwargs))
        if error is not None:
            return self._failed(error, notes)
        changed = {}
        import numpy as np

        for i, (a, b) in enumerate(zip(args, before)):
            if b is not None and not np.array_equal(a, b, equal_nan=True) and a.shape == b.shape:
                changed[str(i)] = self.wire.encode(a)
        try:
            encoded = self.wire.encode(result)
        except (self.wire.WireError, MemoryError, RecursionError) as err:
            return {"ok": False, "type": "ValueError", "error": f"the answer cannot be graded: {err}", **notes}
        aliases = {}  # which parts of the answer are arguments themselves (updated in place)
        for i, a in enumerate(args):
            if result is a:
                aliases["-1"] = i
            elif type(result) is tuple:
                aliases.update({str(j): i for j, r in enumerate(result) if r is a})
        return {"ok": True, "result": encoded, "mutated": changed, "aliases": aliases, **notes}

    def compute(self, message):
        """The compute half of an exercise whose learner object is not data (``_core.Exercise``):
        run the learner's object on a case rebuilt here from ``(which, index, seed)`` and answer
        plain data; the grader judges it."""
        obj = self.namespace.get(message["name"])
        module, which = str(message["module"]), message["which"]
        if not module.startswith("minibn.checks.") or which not in ("public", "hidden", "extra", "require"):
            return {"ok": False, "type": "ValueError", "error": "not a check's exercise"}
        import importlib

        exercise = next(e for e in importlib.import_module(module).EXERCISES if e.name == message["exercise"])
        index, seed = int(message["index"]), message.get("seed")
        if which == "require":
            def thunk():
                exercise._require(obj)
                return {}
        elif which == "extra":
            def thunk():
                return exercise.extra_checks[index].compute(obj)
        else:
            key = (module, exercise.name, which, seed)
            if key not in self.cases:
                self.cases[key] = exercise.public_cases() if which == "public" else exercise.hidden_cases(int(seed))
            case = self.cases[key][index]

            def thunk():
                return exercise.compute(obj, case)
        error, answers, notes = self.traced(thunk)
        if error is not None:
            return self._failed(error, notes)
        if type(answers) is not dict:
            return {"ok": False, "type": "TypeError", "error": "compute answered no dict", **notes}
        raised = answers.pop("raised", None)
        try:
            encoded = self.wire.encode(answers)
        except (self.wire.WireError, MemoryError, RecursionError) as err:
            return {"ok": False, "type": "ValueError", "error": f"the answer cannot be graded: {err}", **notes}
        reply = {"ok": True, "result": encoded, **notes}
        if raised is not None:
            reply["raised"] = {"type": type(raised).__name__, "error": _describe(raised)}
        return reply

    def serve(self):
        while True:
            message = self.wire.receive(self.inp)
            op = message.get("op")
            if op == "bye":
                return
            reply = {"run": self.run_cells, "get": self.get, "call": self.call, "compute": self.compute}[op](message)
            try:
                self.wire.send(self.out, reply)
            except self.wire.WireError as err:  # an answer too large to send: say so instead
                self.wire.send(self.out, {"ok": False, "type": "ValueError",
                                          "error": f"the answer cannot be graded: {err}"})


def _describe(error):
    if error is None:
        return None
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {str(error)[:1000]}"


def main():
    # The protocol keeps private copies of the pipes; the learner's prints go nowhere.
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    def on_alarm(signum, frame):
        raise _CallTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    import numpy  # noqa: F401  (imported before any learner code, for the module guard)
    import numpy.testing  # noqa: F401
    import minibn  # noqa: F401
    import minibn.functional  # noqa: F401

    Server(inp, out).serve()


if __name__ == "__main__":
    main()

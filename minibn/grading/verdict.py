"""The grader's side of the re-grade: the lesson's own test cells, run here, against a learner
process in the sandbox that only computes.

``python -I -m minibn.grading.verdict PLAN RESULT`` (started by ``regrade.regrade``, with the
grading secret and the student id in its environment). It starts ``learner_side`` in the
sandbox, has it run the learner's cells, then executes every test cell of the instructor's
notebook *in this process*: each name a test uses that the lesson's imports do not bind (the
learner's functions) is a ``RemoteFunction`` whose calls send their arguments to the sandbox and
return what the learner's function answered there (validated by ``wire``, arguments it changed
in place written back so the checks' "input mutated" test still works). So the checks, their
cases (hidden ones from the HMAC seed, computed here), tolerances and messages are exactly those
a learner runs in JupyterLab, and nothing the learner's process writes is taken as a score.

A test scores 0 when it fails, when the learner's function is not the notebook's own
(provenance), when it is an exact copy of minibn's reference or of the instructor's solution
(``copies``), or when the learner process saw a call into the reference or a patched module
during it. Once the learner process is gone (a crash, a hard timeout, a broken protocol),
the tests not yet run score 0 with that reason.

A learner object that is not data (lesson 04's autograd ``Function`` and module class, lesson
05's and 07's functions of a model) is judged the same way, one level up: the check's
``Exercise`` has a ``compute`` half, which the proxy's ``minibn_compute`` asks the sandbox to run
on the case (rebuilt there from its index and seed; the seed is the learner's own, printed in
their feedback, never the secret), and a ``judge`` half that compares the answers here. Lesson
06's kernels are strings, so they cross as data, and ``kernel_worker`` compiles and runs them in
a sandbox of their own.
"""
from __future__ import annotations

import ast
import builtins
import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minibn.grading import copies, integrity, sandbox, wire


class LearnerGone(Exception):
    """The learner's process died, hung or broke the protocol; no later test can run."""


class _Deadline(Exception):
    pass


class Link:
    """The pipe pair to the sandboxed learner process, with a deadline on every answer."""

    def __init__(self, proc, hard_timeout):
        self.proc, self.hard_timeout = proc, hard_timeout
        self.gone = None

    def ask(self, message, timeout=None):
        if self.gone:
            raise LearnerGone(self.gone)
        try:
            wire.send(self.proc.stdin, message)
            return self._receive(timeout or self.hard_timeout)
        except _Deadline:
            self._fail(f"the learner's process did not answer within {timeout or self.hard_timeout:.0f} s")
        except (EOFError, wire.WireError, OSError) as err:
            self._fail(self._why(err))

    def _receive(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()

        def read(n):
            chunks, left = [], n
            while left:
                if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise _Deadline()
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    raise EOFError()
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)

        (size,) = struct.unpack(">Q", read(8))
        if size > wire.MAX_MESSAGE:
            raise wire.WireError(f"an answer of {size} bytes (limit {wire.MAX_MESSAGE})")
        try:
            message = json.loads(read(size))
        except ValueError as err:
            raise wire.WireError(f"an answer that is not JSON ({err})") from None
        if type(message) is not dict:
            raise wire.WireError("an answer that is not a JSON object")
        return message

    def _why(self, err):
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
        if code is not None and not isinstance(err, wire.WireError):
            return f"the re-grade process exited with status {code}"
        return f"the learner's process broke the protocol: {err}"

    def _fail(self, why):
        self.gone = why
        self.close()
        raise LearnerGone(why)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class RemoteError(Exception):
    """An exception raised by the learner's function in its own process."""


_REMOTE_TYPES = {}


def _remote_exception(type_name, message):
    base = getattr(builtins, type_name, None)
    if not (isinstance(base, type) and issubclass(base, Exception)):
        base = Exception
    key = (type_name, base)
    if key not in _REMOTE_TYPES:
        _REMOTE_TYPES[key] = type(type_name if type_name.isidentifier() else "Error", (RemoteError, base), {})
    prefix = f"{type_name}: "
    return _REMOTE_TYPES[key](message[len(prefix):] if message.startswith(prefix) else message)


class RemoteFunction:
    """Stands, in the grader, for a learner function that lives in the sandbox."""

    def __init__(self, session, name):
        self._session, self.__name__, self.__qualname__ = session, name, name

    def __call__(self, *args, **kwargs):
        return self._session.call(self.__name__, args, kwargs)

    def __repr__(self):
        return f"<learner function {self.__name__}>"

    def minibn_compute(self, exercise, which, index, seed):
        """The answers of ``exercise.compute`` on the learner's object in the sandbox (see
        ``minibn.checks._core.Exercise``)."""
        return self._session.compute(self.__name__, exercise, which, index, seed)


class Session:
    def __init__(self, link, cell_timeout, launcher=None):
        self.link, self.cell_timeout, self.launcher = link, cell_timeout, launcher
        self.notes = []

    def _ask(self, message):
        reply = self.link.ask(message, timeout=self.cell_timeout + 15)
        if reply.get("hits"):
            self.notes.append(("delegation", [str(h)[:100] for h in reply["hits"]][:5]))
        if reply.get("tamper"):
            self.notes.append(("tamper", [str(t)[:100] for t in reply["tamper"]][:5]))
        if not reply.get("ok"):
            raise _remote_exception(str(reply.get("type", "Exception"))[:60], str(reply.get("error", ""))[:2000])
        return reply

    def compute(self, name, exercise, which, index, seed):
        module = getattr(exercise.judge, "__module__", None) or ""
        reply = self._ask({"op": "compute", "name": name, "module": module, "exercise": exercise.name,
                           "which": which, "index": int(index), "seed": None if seed is None else int(seed)})
        try:
            answers = wire.decode(reply.get("result"))
        except (wire.WireError, ValueError, TypeError) as err:
            raise AssertionError(f"{name} gave answers that cannot be graded ({err})") from None
        if type(answers) is not dict:
            raise AssertionError(f"{name} gave answers that cannot be graded (not a dict)")
        raised = reply.get("raised")
        if isinstance(raised, dict):  # the learner's exception at a later step, raised where judge gets there
            answers["raised"] = _remote_exception(str(raised.get("type", "Exception"))[:60],
                                                  str(raised.get("error", ""))[:2000])
        return answers

    def call(self, name, args, kwargs):
        message = {"op": "call", "name": name, "args": [wire.encode(a) for a in args],
                   "kwargs": {k: wire.encode(v) for k, v in kwargs.items()}}
        reply = self._ask(message)
        try:
            result = wire.decode(reply.get("result"))
            mutated = {int(k): wire.decode(v) for k, v in dict(reply.get("mutated") or {}).items()}
        except (wire.WireError, ValueError, TypeError) as err:
            raise AssertionError(f"{name} returned something that cannot be graded ({err})") from None
        import numpy as np

        for i, value in mutated.items():
            if 0 <= i < len(args) and type(args[i]) is np.ndarray and type(value) is np.ndarray \
                    and value.shape == args[i].shape and args[i].flags.writeable:
                np.copyto(args[i], value, casting="unsafe")
        # An answer that *is* an argument (updated in place and returned) is the grader's own array.
        aliases = {int(k): int(v) for k, v in dict(reply.get("aliases") or {}).items()
                   if str(k).lstrip("-").isdigit() and str(v).isdigit() and 0 <= int(v) < len(args)}
        if -1 in aliases:
            return args[aliases[-1]]
        if aliases and type(result) is tuple:
            result = tuple(args[aliases[j]] if j in aliases else r for j, r in enumerate(result))
        return result


def _learner_command(sandboxed, workdir):
    argv = [sys.executable, "-I", "-m", "minibn.grading.learner_side"]
    env = sandbox.clean_env()
    if sandboxed:
        return sandbox.command(argv, workdir="/tmp/work", env=env), env, None
    return argv, env, workdir


def reference_fingerprints(learner_functions, solution_sources):
    """``{fingerprint: description}`` of minibn's reference and the instructor's solution."""
    import minibn

    root = Path(minibn.__file__).parent
    found = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None) or ""
        if not name.startswith("minibn") or not path.startswith(str(root)) or \
                name.startswith(("minibn.checks", "minibn.grading", "minibn.widgets", "minibn.experiments")):
            continue
        for fn_name in learner_functions:
            fn = vars(mod).get(fn_name)
            print_ = copies.function_fingerprint(fn) if callable(fn) else None
            if print_:
                found[print_] = f"minibn's reference {name}.{fn_name}"
    for source in solution_sources:
        for fn_name, print_ in copies.fingerprints_in_source(source, learner_functions).items():
            found.setdefault(print_, f"the instructor's solution of {fn_name}")
    return found


def _bound_names(source):
    tree = ast.parse(source)
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    return bound


def _lesson_imports(plan):
    """``{name: import statement}`` for the names the lesson's own cells import."""
    out = {}
    for statement in plan.get("lesson_imports", []):
        node = ast.parse(statement).body[0]
        for alias in node.names:
            out[(alias.asname or alias.name).split(".")[0]] = statement
    return out


def run(plan, sandboxed=True):
    cell_timeout = float(plan["cell_timeout"])
    learner = plan["learner_functions"]
    result = {"tests": {}, "flags": []}
    flags = result["flags"]
    # Import every check the tests use before anything else, so the reference is loaded.
    for test in plan["tests"]:
        for node in ast.walk(ast.parse(test["source"])):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minibn"):
                __import__(node.module)
    import minibn.functional  # noqa: F401

    launcher = None
    if "minibn.checks.gpu_kernels" in sys.modules:  # learner CUDA C: compiled and run in a sandbox of its own
        from minibn.checks import gpu_kernels
        from minibn.grading.kernel_worker import Launcher

        launcher = gpu_kernels.run_launches = Launcher(cell_timeout, sandboxed)
    references = {} if plan.get("self_check") else reference_fingerprints(learner, plan.get("solution_sources", []))
    copied = {}
    for cell in plan["cells"]:  # exact copies pasted into the notebook, read from its text
        if cell["learners"]:
            for name, print_ in copies.fingerprints_in_source(cell["source"], learner).items():
                if print_ in references:
                    copied[name] = f"{name} is an exact copy of {references[print_]}"
    with tempfile.TemporaryDirectory(prefix="minibn-learner-") as tmp:
        cmd, env, cwd = _learner_command(sandboxed, tmp)
        budget = cell_timeout * (len(plan["cells"]) + 2) + 30
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=sandbox.preexec(sandbox.Limits(
                                    cpu_seconds=int(budget * 4) + 60,
                                    processes=int(plan.get("processes", sandbox.Limits.processes)))))
        link = Link(proc, budget)
        session = Session(link, cell_timeout, launcher)
        try:
            _run_tests(plan, link, session, references, copied, result)
        finally:
            if launcher is not None:
                launcher.close()
            if link.gone is None:
                try:
                    wire.send(proc.stdin, {"op": "bye"})
                except OSError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            link.close()
            sandbox.sweep_cgroups()
    if link.gone:
        flags.append({"kind": "crash", "detail": link.gone})
    return result


def _run_tests(plan, link, session, references, copied, result):
    flags, learner = result["flags"], plan["learner_functions"]
    delegated = dict(copied)
    proven = integrity.static_provenance(plan["cells"], learner)  # from the notebook's text, here
    try:
        report = link.ask({"op": "run", "cells": plan["cells"], "timeout": plan["cell_timeout"],
                           "learner_functions": learner})
        flags += [f for f in report.get("flags", []) if isinstance(f, dict)][:20]
        for name, info in dict(report.get("functions") or {}).items():
            if name not in learner or not isinstance(info, dict):
                continue
            if not info.get("from_notebook") and name in proven:
                flags.append({"kind": "provenance", "detail": (
                    f"the learner process reports {name} as coming from {str(info.get('origin'))[:200]}, "
                    "but the notebook's text defines it and nothing rebinds it: for review")})
            elif not info.get("from_notebook"):
                delegated[name] = (f"{name} is not defined by the notebook's code "
                                   f"(it comes from {str(info.get('origin'))[:200]})")
            elif info.get("fingerprint") in references and name not in delegated:
                delegated[name] = f"{name} is an exact copy of {references[info['fingerprint']]}"
    except LearnerGone:
        pass
    imports = _lesson_imports(plan)
    for test in plan["tests"]:
        gid, points = test["grade_id"], test["points"]
        blocked = sorted(n for n in test["names"] if n in delegated)
        if blocked:
            result["tests"][gid] = {"passed": False, "score": 0.0, "points": points,
                                    "error": "; ".join(delegated[n] for n in blocked)}
            continue
        if link.gone:
            result["tests"][gid] = {"passed": False, "score": 0.0, "points": points, "error": link.gone}
            continue
        error = _run_test(test, link, session, imports, learner)
        if session.launcher is not None:  # a fresh kernel worker for every test
            session.launcher.close()
        seen = {kind: sorted({w for k, what in session.notes if k == kind for w in what})
                for kind in ("delegation", "tamper")}
        session.notes.clear()
        if seen["delegation"]:
            names = ", ".join(seen["delegation"][:5])
            flags.append({"kind": "delegation", "detail": f"during {gid}: learner code called minibn's reference {names}"})
            error = error or f"delegation: called minibn's reference {names}"
        if seen["tamper"]:
            flags.append({"kind": "tamper", "detail": f"during {gid}: " + ", ".join(seen["tamper"][:5])})
            error = error or "a module was patched while the check ran"
        result["tests"][gid] = {"passed": error is None, "score": points if error is None else 0.0,
                                "points": points, "error": error}
    for name, why in delegated.items():
        flags.append({"kind": "copy" if "exact copy" in why else "delegation", "detail": why})


def _run_test(test, link, session, imports, learner):
    source = test["source"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    own = _bound_names(source)
    for name in test["names"]:
        if name in own:
            continue
        if name in imports and name not in learner:
            exec(imports[name], namespace)
            continue
        if hasattr(builtins, name) and name not in learner:
            continue
        try:
            answer = link.ask({"op": "get", "name": name})
        except LearnerGone as gone:
            return str(gone)
        if answer.get("kind") == "function":
            namespace[name] = RemoteFunction(session, name)
        elif answer.get("kind") == "object":  # a class: its exercise's compute half runs in the sandbox
            namespace[name] = RemoteFunction(session, name) if answer.get("callable") else wire._opaque("str")
        elif answer.get("kind") == "value":
            try:
                namespace[name] = wire.decode(answer.get("value"))
            except wire.WireError as err:
                return f"{name} cannot be graded: {err}"
    try:
        exec(compile(source, f"<test {test['grade_id']}>", "exec"), namespace)
        return None
    except LearnerGone as gone:
        return str(gone)
    except RemoteError as err:
        return f"{type(err).__name__}: {err}"
    except BaseException as err:  # the check's AssertionError, with its message
        return f"{type(err).__name__}: {str(err)[:1000]}"


def main(plan_path, result_path):
    plan = json.loads(Path(plan_path).read_text())
    result = run(plan, sandboxed=not plan.get("unsafe_no_sandbox"))
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

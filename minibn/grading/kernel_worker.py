"""Learner CUDA C, compiled and run in a sandbox of its own, never in the grader.

Lesson 06's learner functions return a kernel's source text, which crosses to the grader as data
(a string); the check then launches it on its cases. That kernel is learner code: compiled by g++
and run natively by the CPU executor, it could do anything the grader can. So in the grader
``minibn.checks.gpu_kernels.run_launches`` is a ``Launcher``, which sends the source and the
inputs to this worker (``python -I -m minibn.grading.kernel_worker``) in a fresh bubblewrap
sandbox, and gets back each schedule's output arrays, or the compiler's or sanitizer's message.
The worker runs only minibn's executor, never the learner's Python, so nothing the learner's
cells did can reach it; the comparison of the two schedules and of the outputs with the
reference stays in the grader. One worker serves one test and is replaced for the next.

What the learner's kernel can still do, since it runs in the worker's process: overwrite that
process's memory, the sanitizer's bookkeeping included. So a kernel written to do so can hide its
own race or out-of-bounds access from the report; it cannot change what the grader compares, and
its output arrays are still checked against the reference, per schedule.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from minibn.grading import sandbox, wire


class Launcher:
    """``launch_here``'s signature, run in the sandboxed worker; ``close()`` ends the worker."""

    def __init__(self, timeout, sandboxed=True):
        self.timeout, self.sandboxed = float(timeout), sandboxed
        self.link, self.tmp = None, None

    def _start(self):
        from minibn.grading.verdict import Link

        argv = [sys.executable, "-I", "-m", "minibn.grading.kernel_worker"]
        env = sandbox.clean_env({"MINIBN_KERNEL_DEVICE": "cpu"})  # no GPU in the sandbox
        self.tmp = tempfile.TemporaryDirectory(prefix="minibn-kernel-")
        if self.sandboxed:
            cmd, cwd = sandbox.command(argv, workdir="/tmp/work", env=env), None
        else:
            cmd, cwd = argv, self.tmp.name
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=sandbox.preexec(sandbox.Limits(cpu_seconds=int(self.timeout * 4) + 60)))
        self.link = Link(proc, self.timeout + 15)

    def __call__(self, code, kernel, grid, block, args, outputs, description, shared_mem=0, *,
                 cpu_only=False, zeroed=()):
        from minibn.grading.verdict import LearnerGone

        if self.link is None or self.link.gone:
            self.close()
            self._start()
        message = {"code": code, "kernel": kernel, "grid": list(grid), "block": list(block),
                   "args": [wire.encode(a) for a in args], "outputs": [[int(i), str(n)] for i, n in outputs.items()],
                   "description": description, "shared_mem": int(shared_mem), "cpu_only": bool(cpu_only),
                   "zeroed": [int(i) for i in zeroed]}
        try:
            reply = self.link.ask(message)
        except LearnerGone as gone:
            raise AssertionError(f"{kernel} did not finish ({description}): {gone}") from None
        if reply.get("error") is not None:
            raise AssertionError(str(reply["error"])[:4000])
        try:
            runs = wire.decode(reply.get("runs"))
        except wire.WireError as err:
            raise AssertionError(f"{kernel}'s outputs cannot be graded ({err})") from None
        if not (type(runs) is list and 1 <= len(runs) <= 2 and all(
                type(r) is list and len(r) == len(outputs) and all(type(a) is wire.np.ndarray for a in r)
                for r in runs)):
            raise AssertionError(f"{kernel}'s outputs cannot be graded")
        for run in runs:
            for a, arg in zip(run, (args[i] for i in outputs)):
                if a.shape != arg.shape:
                    raise AssertionError(f"{kernel}'s outputs cannot be graded (shape {a.shape})")
        return runs

    def close(self):
        if self.link is not None:
            if self.link.gone is None:
                try:
                    wire.send(self.link.proc.stdin, {"op": "bye"})
                    self.link.proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self.link.close()
            self.link = None
            sandbox.sweep_cgroups()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def serve(inp, out):
    import numpy as np

    from minibn.checks.gpu_kernels import launch_here

    while True:
        message = wire.receive(inp)
        if message.get("op") == "bye":
            return
        args = [wire.decode(a) for a in message["args"]]
        outputs = {int(i): str(n) for i, n in message["outputs"]}
        try:
            runs = launch_here(message["code"], message["kernel"], tuple(message["grid"]), tuple(message["block"]),
                               args, outputs, message["description"], message["shared_mem"],
                               cpu_only=message["cpu_only"], zeroed=tuple(message["zeroed"]))
            reply = {"runs": wire.encode([[np.ascontiguousarray(a) for a in run] for run in runs])}
        except AssertionError as err:
            reply = {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - the executor's own failure, reported as the kernel's
            reply = {"error": f"{message['kernel']} failed ({message['description']}): {type(err).__name__}: {err}"}
        wire.send(out, reply)


def main():
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the compiler's and the kernel's own output go nowhere
        os.dup2(null, fd)
    serve(inp, out)


if __name__ == "__main__":
    main()

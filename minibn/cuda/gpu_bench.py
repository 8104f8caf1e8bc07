"""Timing lesson 06's kernels on a GPU, honestly: CUDA events around back-to-back launches on
pre-allocated buffers, turned into effective bandwidth at each pass's traffic floor and compared
with a device-to-device copy measured in the same run and with torch's BatchNorm.

Used by ``benchmarks/bench_kernels.py`` (a quick table) and ``benchmarks/gpu_report.py`` (the
full report). Only ``bandwidth``/``row`` are arithmetic; everything else needs CuPy and a GPU.
The launches come from ``progression.STEPS``: the benchmark times exactly what the lesson runs.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = ["BYTES", "PHASE_BYTES", "Timer", "bandwidth", "copy_runner", "row", "step_runners", "torch_runners"]

# Minimum traffic per element, fp32: forward reads x twice and writes y; backward reads x and dy
# twice and writes dx; a copy reads and writes once.
BYTES = {"forward": 12, "backward": 20, "copy": 8}
# Per phase of a step (the finalize merges C*S partials: no per-element traffic).
PHASE_BYTES = {"stats": 4, "finalize": 0, "apply": 8, "reduce": 8, "elementwise": 12}


def bandwidth(bytes_per_element, elements, ms):
    """Effective GB/s of a pass that must move ``bytes_per_element`` per element in ``ms``."""
    return bytes_per_element * elements / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")


def row(name, kind, pass_, ms, elements, copy_gbps, reference_ms=None, phase=None, launches=None):
    """One timing row: time, effective bandwidth, % of the measured copy, ratio to a reference."""
    per_element = PHASE_BYTES[phase] if phase else BYTES[pass_]
    gbps = bandwidth(per_element, elements, ms) if per_element else None
    return {
        "name": name, "kind": kind, "pass": pass_, "phase": phase, "ms": ms, "launches": launches,
        "bytes_per_element": per_element, "gbps": gbps,
        "pct_copy": 100.0 * gbps / copy_gbps if gbps and copy_gbps else None,
        "x_reference": ms / reference_ms if reference_ms else None,
    }


@dataclass
class Timer:
    """Milliseconds per call of ``fn``: ``launches`` back-to-back calls between two CUDA events
    (so launch gaps are amortized as they are in a training step), after a warm-up call, in
    ``repeats`` groups; the best group is the figure, the median shows the spread."""

    cp: object
    launches: int = 20
    repeats: int = 5

    def __call__(self, fn, launches=None, repeats=None):
        launches = launches or self.launches
        fn()
        self.cp.cuda.Device().synchronize()
        per_call = []
        for _ in range(repeats or self.repeats):
            start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
            start.record()
            for _ in range(launches):
                fn()
            end.record()
            end.synchronize()
            per_call.append(self.cp.cuda.get_elapsed_time(start, end) / launches)
        return {"ms": min(per_call), "median_ms": statistics.median(per_call), "launches": launches}


def step_runners(step, arrays, shape, rt, *, block=256, splits=None):
    """``(full, {phase: fn})`` for a CUDA C step on pre-allocated buffers: ``arrays`` holds the
    inputs (x, gamma, beta; dy, mean, invstd for K6), and the plan's own buffers are allocated
    here once. Each callable only launches."""
    from minibn.cuda.progression import allocate, dims

    N, C, HW = dims(arrays["x"])
    mode = "backward" if step.key == "K6" else "forward"
    plan = step.launch(N, C, HW, block=block, splits=splits, mode=mode)
    bufs = allocate(plan, rt, arrays)
    calls = []
    for launch in plan.launches:
        kernel = rt.kernel(launch.file, launch.kernel)
        args = tuple(plan.scalars[a] if a in plan.scalars else bufs[a] for a in launch.args)
        calls.append((launch.phase, lambda k=kernel, l=launch, a=args: k(l.grid, l.block, a, shared_mem=l.shared_mem)))

    def full():
        for _, call in calls:
            call()

    phases = {}
    for phase in dict.fromkeys(p for p, _ in calls):
        group = [c for p, c in calls if p == phase]
        phases[phase] = lambda g=group: [c() for c in g]
    full()  # fills the statistics, so a phase timed alone reads real values
    return full, phases, bufs


def copy_runner(cp, x):
    """A device-to-device memcpy of ``x`` (reads and writes every byte once: 8 B/element)."""
    out = cp.empty_like(x)
    return lambda: out.data.copy_from_device_async(x.data, x.nbytes)


def torch_runners(x, dy, gamma, beta):
    """torch's batch_norm on the same device memory (DLPack, no copy): ``{name: fn}`` with cuDNN
    and with the native ATen kernels (cudnn disabled), forward and backward; ``{}`` and a reason
    when torch has no CUDA."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}, "torch is not installed"
    if not torch.cuda.is_available():
        return {}, "this torch build has no CUDA"
    tx = torch.from_dlpack(x).detach().requires_grad_(True)
    tdy, tg, tb = torch.from_dlpack(dy), torch.from_dlpack(gamma), torch.from_dlpack(beta)
    runners = {}
    for label, cudnn in (("cuDNN", True), ("ATen native", False)):
        def fwd(cudnn=cudnn):
            with torch.backends.cudnn.flags(enabled=cudnn), torch.no_grad():
                F.batch_norm(tx, None, None, tg, tb, training=True)

        with torch.backends.cudnn.flags(enabled=cudnn):
            y = F.batch_norm(tx, None, None, tg, tb, training=True)

        def bwd(y=y, cudnn=cudnn):
            with torch.backends.cudnn.flags(enabled=cudnn):
                torch.autograd.grad(y, tx, tdy, retain_graph=True)

        runners[f"torch {label}", "forward"] = fwd
        runners[f"torch {label}", "backward"] = bwd
    return runners, None


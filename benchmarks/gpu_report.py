"""The first GPU run of lesson 06's kernels, in one report (JSON + Markdown), in under 8 minutes.

On a CUDA machine (CuPy and torch with CUDA):
1. the device, its driver and libraries;
2. correctness: every step of ``progression.STEPS`` against float64 on awkward shapes (several
   blocks per channel with the float4 path, H*W % 4 != 0 with several blocks, a misaligned view,
   N*C > 65535 rows, a 2-D input, and one tensor over 2^31 elements if memory allows);
3. determinism: K5 forward and K6 backward repeated 50 times, bitwise identical;
4. timings at 256x64x56x56 float32: CUDA events around 20 back-to-back launches on buffers
   allocated once, per step and per phase, as % of a device-to-device copy measured in the same
   run and as a ratio to torch's cuDNN and native BatchNorm;
5. the goals: K5 forward >= 80 % of the copy bandwidth and <= 1.1x cuDNN, backward >= 70 %;
6. ``minibn.nn.SyncBatchNorm`` against ``torch.nn.SyncBatchNorm`` (which runs on GPUs only) on
   the same split of one batch over 2 processes sharing the GPU (gloo): outputs, input and
   parameter gradients, running statistics, float64, after training steps and one in eval;
7. compute-sanitizer's memcheck, racecheck and synccheck on small shapes, when it is installed.

Every part runs against a deadline: what does not fit is reported as skipped, never guessed.
Without a GPU it prints why and exits 0 (the CPU executor checks correctness, not speed).

Usage: python benchmarks/gpu_report.py [--out build/gpu-report] [--budget 480]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUDGET_S = 8 * 60
TIMING_SHAPE = (256, 64, 56, 56)
HUGE_SHAPE = (8, 64, 2050, 2050)  # 2,151,680,000 elements: past 2^31, H*W % 4 == 0
REPEATS = 50
GOALS = (
    ("K5 forward, % of copy bandwidth", "forward K5", "pct_copy", ">=", 80.0),
    ("K5 forward, time / cuDNN", "forward K5", "x_reference", "<=", 1.1),
    ("K6 backward, % of copy bandwidth", "backward K6", "pct_copy", ">=", 70.0),
)
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
SYNC_SHARES = (3, 5)  # unequal: a process's own mean and variance are not the batch's
SYNC_SAMPLE = (6, 5, 5)
SYNC_STEPS = 3  # training steps, then one in eval
SYNC_RTOL = 1e-10
NO_GPU = ("gpu_report: no CUDA GPU here (CuPy sees none), so there is nothing to measure. Run this "
          "on a machine with an NVIDIA GPU, CuPy (cupy-cuda12x) and torch with CUDA; it writes "
          "build/gpu-report/report.json and report.md in under 8 minutes. On this machine, the CPU "
          "executor's tests (pytest tests/cuda) check the kernels' correctness.")


# ---- planning (no GPU needed) ------------------------------------------------------------------

@dataclass(frozen=True)
class CheckCase:
    name: str
    shape: tuple
    steps: tuple  # progression step keys; "K6" means the backward
    layout: str = "contiguous"  # or "misaligned": a view 4 bytes past an aligned start
    splits: int | None = None
    block: int = 256


def plan_checks(free_bytes):
    """The correctness cases, the over-2^31 tensor only when free memory holds what it needs:
    x and y (forward), plus dy and dx (backward), with a margin for float64 chunks."""
    every = ("L0", "L1", "K0", "K1", "K2", "K3", "K4", "K5", "K6")
    cases = [
        CheckCase("several blocks per channel, float4 path", (8, 16, 32, 32), every),
        CheckCase("H*W % 4 != 0, several blocks per channel", (16, 8, 17, 19), every, splits=6),
        CheckCase("misaligned view (scalar path)", (4, 8, 16, 16), every, layout="misaligned", splits=3),
        CheckCase("N*C = 70400 > 65535 rows", (1100, 64, 2, 2), ("K2", "K3", "K4", "K5", "K6")),
        CheckCase("2-D input (N, C)", (4096, 32), every, block=128),
        CheckCase("partial last warp (block 48)", (6, 4, 9, 9), ("K2", "K3", "K4", "K5", "K6"), block=48),
    ]
    skipped = []
    huge_bytes = int(np.prod(HUGE_SHAPE)) * 4
    if free_bytes >= 5 * huge_bytes:
        cases.append(CheckCase("over 2^31 elements", HUGE_SHAPE, ("K5", "K6")))
    elif free_bytes >= 3 * huge_bytes:
        cases.append(CheckCase("over 2^31 elements", HUGE_SHAPE, ("K5",)))
        skipped.append(("over 2^31 elements, K6 backward", f"needs {5 * huge_bytes / 2**30:.0f} GiB free"))
    else:
        skipped.append(("over 2^31 elements", f"needs {3 * huge_bytes / 2**30:.0f} GiB free, the device has "
                                              f"{free_bytes / 2**30:.1f} GiB"))
    return cases, skipped


class Deadline:
    """Seconds left of the budget; ``clock`` is injectable so tests can run it on fake time."""

    def __init__(self, budget_s, clock=time.monotonic):
        self.clock = clock
        self.start = clock()
        self.budget_s = budget_s

    def left(self):
        return self.budget_s - (self.clock() - self.start)

    def allows(self, seconds):
        return self.left() >= seconds


def goals(rows):
    """The report's verdict on each goal, from the timing rows (``None`` when unmeasured)."""
    by_name = {}
    for r in rows:
        by_name.setdefault(r["name"].split(":")[0], r)
    verdicts = []
    for text, name, key, op, target in GOALS:
        value = by_name.get(name, {}).get(key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        verdicts.append({"goal": text, "value": value, "target": f"{op} {target:g}", "met": met})
    return verdicts


# ---- the report --------------------------------------------------------------------------------

def _fmt(v, spec=".1f", none="n/a"):
    return none if v is None else format(v, spec)


def render_markdown(report):
    """The Markdown report; every figure comes from ``report`` (the JSON's content)."""
    d = report.get("device", {})
    out = [f"# Lesson 06 kernels on {d.get('name', 'a GPU')}", "",
           f"Written {report['created']} in {report['duration_s']:.0f} s (budget {report['budget_s']:.0f} s).", "",
           "## Device", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in d.items()]
    out += ["", "## Correctness against float64", "",
            "| case | shape | step | max error (y or dx) | tolerance | result |", "|---|---|---|---|---|---|"]
    for c in report.get("checks", []):
        out.append(f"| {c['case']} | {'x'.join(map(str, c['shape']))} | {c['step']} | "
                   f"{_fmt(c.get('error'), '.2e')} | {_fmt(c.get('tolerance'), '.1e')} | "
                   f"{'pass' if c['ok'] else 'FAIL: ' + c.get('detail', '')} |")
    out += ["", f"## Determinism ({REPEATS} repeats, bitwise)", ""]
    for r in report.get("determinism", []):
        out.append(f"- {r['step']}: {'identical' if r['identical'] else 'DIFFERENT: ' + r.get('detail', '')}")
    t = report.get("timings", {})
    if t:
        out += ["", f"## Timings at {'x'.join(map(str, t['shape']))} float32", "",
                f"Copy (device to device): {t['copy_gbps']:.0f} GB/s measured. Each time is the best of "
                f"groups of {t['launches']} back-to-back launches; GB/s counts the pass's minimum traffic "
                "(12 B/element forward, 20 backward; per phase: statistics 4, normalize 8, backward "
                "reduce 8, dx 12).", "",
                "| implementation | phase | time ms | GB/s | % of copy | x cuDNN |", "|---|---|---|---|---|---|"]
        for r in t["rows"]:
            out.append(f"| {r['name']} | {r['phase'] or 'all'} | {r['ms']:.3f} | {_fmt(r['gbps'], '.0f')} | "
                       f"{_fmt(r['pct_copy'])} | {_fmt(r['x_reference'], '.2f')} |")
    out += ["", "## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in report.get("goals", []):
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "no")
        out.append(f"| {g['goal']} | {_fmt(g['value'], '.2f')} | {g['target']} | {met} |")
    sync = report.get("sync_batchnorm")
    if sync:
        out += ["", f"## SyncBatchNorm vs {sync['peer']}", "",
                f"{len(sync['shares'])} processes (gloo, batch shares {sync['shares']}), float64, "
                f"{sync['steps']} training steps then one in eval; largest relative difference "
                f"(tolerance {sync['rtol']:.0e}):", "",
                "| quantity | difference | result |", "|---|---|---|"]
        for q in sync["quantities"]:
            out.append(f"| {q['name']} | {q['error']:.2e} | {'pass' if q['ok'] else 'FAIL'} |")
    out += ["", "## compute-sanitizer", ""]
    for s in report.get("sanitizer", []):
        out.append(f"- {s['tool']}: {s['summary']}")
    if report.get("skipped"):
        out += ["", "## Skipped", ""] + [f"- {what}: {why}" for what, why in report["skipped"]]
    return "\n".join(out) + "\n"


def write_report(report, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out_dir / "report.md").write_text(render_markdown(report))
    return out_dir / "report.json", out_dir / "report.md"


def _json_default(v):
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


# ---- on the GPU ----------------------------------------------------------------------------------

def device_info(cp):
    props = cp.cuda.runtime.getDeviceProperties(0)
    info = {
        "name": props["name"].decode(),
        "compute capability": f"{props['major']}.{props['minor']}",
        "SMs": props["multiProcessorCount"],
        "memory GiB": round(props["totalGlobalMem"] / 2**30, 1),
        "CUDA driver API": cp.cuda.runtime.driverGetVersion(),
        "CUDA runtime": cp.cuda.runtime.runtimeGetVersion(),
        "CuPy": cp.__version__,
    }
    if props.get("memoryClockRate") and props.get("memoryBusWidth"):  # gone from newer CUDA headers
        info["peak DRAM GB/s (clock x bus)"] = round(2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9)
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=False)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuDNN"] = torch.backends.cudnn.version() if torch.cuda.is_available() else "torch has no CUDA"
    except ImportError:
        info["torch"] = "not installed"
    return info


def _data(cp, case, seed=0, with_dy=True):
    """Inputs on the device, drawn there (a host copy of a 2^31-element tensor would take minutes)."""
    rng = cp.random.default_rng(seed)
    n = int(np.prod(case.shape))
    flat = rng.standard_normal(n + 1, dtype=cp.float32) * 2.0 + 1.5
    x = (flat[1:] if case.layout == "misaligned" else flat[:n]).reshape(case.shape)
    C = case.shape[1]
    gamma = rng.uniform(0.5, 2.0, C).astype(cp.float32)
    beta = rng.standard_normal(C, dtype=cp.float32)
    dy = rng.standard_normal(n, dtype=cp.float32).reshape(case.shape) if with_dy else None
    return x, gamma, beta, dy


def _chunks(N):
    step = max(1, N // 8)
    return [slice(n, n + step) for n in range(0, N, step)]


def _reference(cp, x, dy):
    """float64 per-channel statistics and backward sums, in chunks over N (any tensor the GPU holds)."""
    C = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    b = (1, C) + (1,) * (x.ndim - 2)
    m = x.size // C
    mean = sum(x[k].astype(cp.float64).sum(axis=axes) for k in _chunks(x.shape[0])) / m
    s2, sdy, sdyx = (cp.zeros(C, cp.float64) for _ in range(3))
    for k in _chunks(x.shape[0]):
        xc = x[k].astype(cp.float64) - mean.reshape(b)
        s2 += (xc * xc).sum(axis=axes)
        if dy is not None:
            dc = dy[k].astype(cp.float64)
            sdy += dc.sum(axis=axes)
            sdyx += (dc * xc).sum(axis=axes)
    var = s2 / m
    invstd = 1.0 / cp.sqrt(var + 1e-5)
    return {"mean": mean, "var": var, "invstd": invstd, "dbeta": sdy, "dgamma": sdyx * invstd, "m": m, "b": b}


def _sample(a):
    """A strided sample of a big tensor (every element of a small one), as float64."""
    if a.size > 1 << 22:
        a = a[(slice(None), slice(None)) + tuple(slice(None, None, 97) for _ in a.shape[2:])]
    return a.astype(a.dtype if a.dtype == np.float64 else np.float64)


def _want_y(ref, x, gamma, beta):
    b = ref["b"]
    return ((_sample(x) - ref["mean"].reshape(b)) * ref["invstd"].reshape(b)
            * gamma.astype(np.float64).reshape(b) + beta.astype(np.float64).reshape(b))


def _want_dx(ref, x, dy, gamma):
    b, m = ref["b"], ref["m"]
    xhat = (_sample(x) - ref["mean"].reshape(b)) * ref["invstd"].reshape(b)
    return gamma.astype(np.float64).reshape(b) * ref["invstd"].reshape(b) * (
        _sample(dy) - ref["dbeta"].reshape(b) / m - xhat * ref["dgamma"].reshape(b) / m)


def run_checks(cp, cases, deadline, log=print):
    """Every case's steps against float64. ``cp`` is CuPy; NumPy works too (the kernels then run
    through the CPU executor, which is how the tests exercise this on small cases)."""
    from minibn.cuda import progression as P

    results, skipped = [], []
    for case in cases:
        if not deadline.allows(60 if case.name.startswith("over") else 10):
            skipped.append((f"checks: {case.name}", "time budget"))
            continue
        x, gamma, beta, dy = _data(cp, case, with_dy="K6" in case.steps)
        ref = _reference(cp, x, dy)
        f32 = {k: ref[k].astype(cp.float32) for k in ("mean", "invstd")}
        for key in case.steps:
            if key == "K1" and case.block & (case.block - 1):
                continue
            entry = {"case": case.name, "shape": list(case.shape), "step": key, "ok": False}
            try:
                if key == "K6":
                    dx, dgamma, dbeta = P.backward(dy, x, f32["mean"], f32["invstd"], gamma, block=case.block,
                                                   splits=case.splits)
                    err = float(cp.abs(_sample(dx) - _want_dx(ref, x, dy, gamma)).max())
                    tol = 1e-4
                    scale = np.sqrt(ref["m"])  # sums of m terms of size ~1
                    stats_ok = bool(cp.allclose(dbeta, ref["dbeta"], rtol=1e-4, atol=1e-4 * scale)
                                    and cp.allclose(dgamma, ref["dgamma"], rtol=1e-3, atol=1e-3 * scale))
                else:
                    y, mean, var, _ = P.forward(key, x, gamma, beta, block=case.block, splits=case.splits)
                    err = float(cp.abs(_sample(y) - _want_y(ref, x, gamma, beta)).max())
                    tol = 1e-3 if key == "K1" else 1e-4  # K1's one-pass variance is the lesson's bad example
                    stats_ok = bool(cp.allclose(mean, ref["mean"], rtol=1e-5, atol=1e-5)
                                    and cp.allclose(var, ref["var"], rtol=1e-3 if key == "K1" else 1e-4, atol=1e-5))
                entry.update(error=err, tolerance=tol, ok=err <= tol and stats_ok)
                if not entry["ok"]:
                    entry["detail"] = "statistics off" if err <= tol else "output off"
            except Exception as exc:  # a launch error is a result, not a crash of the report
                entry["detail"] = f"{type(exc).__name__}: {exc}"[:300]
            results.append(entry)
            log(f"  {case.name:45s} {key}: {'pass' if entry['ok'] else 'FAIL ' + entry.get('detail', '')}")
        del x, dy
        if hasattr(cp, "get_default_memory_pool"):
            cp.get_default_memory_pool().free_all_blocks()
    return results, skipped


def run_determinism(cp, deadline, repeats=REPEATS, shape=(8, 16, 32, 32)):
    from minibn.cuda import progression as P

    if not deadline.allows(20):
        return [], [("determinism", "time budget")]
    x, gamma, beta, dy = _data(cp, CheckCase("", shape, ()))
    out = []
    first_fwd = [a.copy() for a in P.forward("K5", x, gamma, beta)]
    first_bwd = [a.copy() for a in P.backward(dy, x, first_fwd[1], first_fwd[3], gamma)]
    fwd_same = bwd_same = True
    for _ in range(repeats - 1):
        fwd_same &= all(bool(cp.array_equal(a, b)) for a, b in zip(P.forward("K5", x, gamma, beta), first_fwd))
        bwd_same &= all(bool(cp.array_equal(a, b)) for a, b in
                        zip(P.backward(dy, x, first_fwd[1], first_fwd[3], gamma), first_bwd))
    out.append({"step": "K5 forward", "identical": fwd_same, "detail": "" if fwd_same else "outputs differ"})
    out.append({"step": "K6 backward", "identical": bwd_same, "detail": "" if bwd_same else "outputs differ"})
    return out, []


def run_timings(cp, deadline, log=print, timer=None, shape=TIMING_SHAPE, copy=None):
    """Times every step (and each phase) on buffers allocated once. ``timer``, ``shape`` and
    ``copy`` (the copy to compare with) are injectable, so the tests can drive the same code on
    the CPU executor with a fake clock; on a GPU they are CUDA events, 256x64x56x56, a memcpy."""
    from minibn.cuda import gpu_bench as gb
    from minibn.cuda import progression as P
    from minibn.cuda.runtime import is_cupy, runtime_for

    if not deadline.allows(60):
        return {}, [("timings", "time budget")]
    x, gamma, beta, dy = _data(cp, CheckCase("timing", shape, ()))
    elements = x.size
    rt = runtime_for(x)
    timer = timer or gb.Timer(cp, launches=20, repeats=5)
    copy_ms = timer(copy or gb.copy_runner(cp, x))["ms"]
    copy_gbps = gb.bandwidth(gb.BYTES["copy"], elements, copy_ms)
    torch_fns, why = gb.torch_runners(x, dy, gamma, beta)
    reference = {p: timer(fn)["ms"] for (name, p), fn in torch_fns.items() if name == "torch cuDNN"}
    rows = [gb.row("copy (device to device)", "copy", "copy", copy_ms, elements, copy_gbps,
                   launches=getattr(timer, "launches", None))]
    skipped = [("torch comparison", why)] if why else []
    _, mean, _, invstd = P.forward("K5", x, gamma, beta)
    for step in P.STEPS:
        if not deadline.allows(30):
            skipped.append((f"timing {step.key}", "time budget"))
            continue
        pass_ = "backward" if step.key == "K6" else "forward"
        if not step.modes and not is_cupy(x):
            skipped.append((f"timing {step.key}", "CuPy's own kernels need a GPU"))
            continue
        repeats = 2 if step.key == "K0" else None  # one thread per channel: ~1000x slower
        if step.modes:
            given = {"x": x, "gamma": gamma, "beta": beta}
            if pass_ == "backward":
                given.update(dy=dy, mean=mean, invstd=invstd)
            full, phases, _ = gb.step_runners(step, given, shape, rt)
        else:
            full, phases = (lambda s=step.key: P.forward(s, x, gamma, beta)), {}
        t = timer(full, repeats=repeats)
        rows.append(gb.row(f"{pass_} {step.key}: {step.title}", "ours", pass_, t["ms"], elements, copy_gbps,
                           reference.get(pass_), launches=t["launches"]))
        log(f"  {step.key}: {t['ms']:.3f} ms")
        if len(phases) > 1:
            for phase, fn in phases.items():
                tp = timer(fn, repeats=repeats)
                rows.append(gb.row(f"{pass_} {step.key}: {step.title}", "ours", pass_, tp["ms"], elements,
                                   copy_gbps, phase=phase, launches=tp["launches"]))
    for (name, pass_), fn in torch_fns.items():
        t = timer(fn)
        rows.append(gb.row(f"{pass_} {name}", "torch", pass_, t["ms"], elements, copy_gbps,
                           reference.get(pass_), launches=t["launches"]))
    return {"shape": list(shape), "copy_gbps": copy_gbps, "launches": rows[0]["launches"], "rows": rows}, skipped


def sanitizer_target():
    """What compute-sanitizer runs: every CUDA C step once on small shapes (no torch, no timing)."""
    import cupy as cp

    from minibn.cuda import progression as P

    for shape, block in (((3, 5, 7, 9), 64), ((4, 3, 4, 4), 48)):
        case = CheckCase("", shape, ())
        x, gamma, beta, dy = _data(cp, case)
        for step in P.STEPS:
            if "forward" in step.modes and not (step.key == "K1" and block & (block - 1)):
                P.forward(step.key, x, gamma, beta, block=block, splits=3)
        _, mean, _, invstd = P.forward("K5", x, gamma, beta, block=block, splits=3)
        P.backward(dy, x, mean, invstd, gamma, block=block, splits=3)
    cp.cuda.Device().synchronize()
    return 0


def run_sanitizer(deadline, tools=SANITIZER_TOOLS, which=shutil.which, run=subprocess.run):
    exe = which("compute-sanitizer")
    if not exe:
        return [{"tool": t, "ok": None, "summary": "not run: compute-sanitizer not found on PATH"} for t in tools], []
    results, skipped = [], []
    for tool in tools:
        left = deadline.left() - 20
        if left < 30:
            skipped.append((f"compute-sanitizer {tool}", "time budget"))
            continue
        cmd = [exe, "--tool", tool, "--error-exitcode", "17", sys.executable, os.path.abspath(__file__),
               "--sanitizer-target"]
        try:
            proc = run(cmd, capture_output=True, text=True, timeout=min(left, 150), check=False)
        except subprocess.TimeoutExpired:
            results.append({"tool": tool, "ok": None, "summary": "timed out"})
            continue
        tail = (proc.stdout + proc.stderr)[-2000:]
        summary = next((ln.strip() for ln in tail.splitlines()[::-1] if "ERROR SUMMARY" in ln), f"exit {proc.returncode}")
        results.append({"tool": tool, "ok": proc.returncode == 0, "summary": summary, "output_tail": tail})
    return results, skipped


def sync_batchnorm_rank(rank, world_size, device, peer):
    """One process's part of the SyncBatchNorm comparison: minibn's and ``peer``'s module (a
    name: ``"torch"`` for ``torch.nn.SyncBatchNorm``) on this rank's share of the same batches.
    Returns, per module and step, the output, the input/weight/bias gradients and the buffers."""
    import torch

    from minibn import nn as mnn

    peers = {"torch": torch.nn.SyncBatchNorm, "minibn": mnn.SyncBatchNorm,
             "local": torch.nn.BatchNorm2d}  # the last two for the tests on the CPU
    lo = sum(SYNC_SHARES[:rank])
    out = {}
    for name, cls in (("minibn", mnn.SyncBatchNorm), ("peer", peers[peer])):
        m = cls(SYNC_SAMPLE[0], momentum=0.3, device=device, dtype=torch.float64)
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 1.5, SYNC_SAMPLE[0], dtype=torch.float64))
            m.bias.copy_(torch.linspace(-1.0, 1.0, SYNC_SAMPLE[0], dtype=torch.float64))
        steps = []
        for step in range(SYNC_STEPS + 1):
            m.train(step < SYNC_STEPS)
            gen = torch.Generator().manual_seed(step)
            x = torch.randn((sum(SYNC_SHARES),) + SYNC_SAMPLE, generator=gen, dtype=torch.float64) * 3 + 2
            dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            x = x[lo:lo + SYNC_SHARES[rank]].to(device).requires_grad_()
            y = m(x)
            y.backward(dy[lo:lo + SYNC_SHARES[rank]].to(device))
            steps.append({k: v.detach().cpu().numpy().copy() for k, v in (
                ("output", y), ("input gradient", x.grad), ("weight gradient", m.weight.grad),
                ("bias gradient", m.bias.grad), ("running_mean", m.running_mean),
                ("running_var", m.running_var), ("num_batches_tracked", m.num_batches_tracked))})
            m.zero_grad()
        out[name] = steps
    return out


def compare_sync(ranks, peer_name, rtol=SYNC_RTOL):
    """The report's section from every rank's ``sync_batchnorm_rank`` result."""
    quantities = []
    for key in ranks[0]["minibn"][0]:
        error = 0.0
        for rank in ranks:
            for ours, theirs in zip(rank["minibn"], rank["peer"]):
                a, b = ours[key].astype(np.float64), theirs[key].astype(np.float64)
                if a.size:
                    error = max(error, float(np.max(np.abs(a - b) / (np.abs(b) + 1e-12))))
        quantities.append({"name": key, "error": error, "ok": error <= rtol})
    return {"peer": peer_name, "shares": list(SYNC_SHARES), "steps": SYNC_STEPS, "rtol": rtol,
            "quantities": quantities}


def run_sync_batchnorm(deadline, device="cuda", peer="torch", log=print):
    """minibn's SyncBatchNorm against ``peer``'s over 2 gloo processes on ``device``."""
    from minibn import nn as mnn

    if not deadline.allows(90):  # two processes importing torch and starting CUDA
        return {}, [("SyncBatchNorm comparison", "time budget")]
    try:
        ranks = mnn.run_distributed(sync_batchnorm_rank, len(SYNC_SHARES), device, peer, timeout_s=60)
    except Exception as e:  # a missing gloo/CUDA feature is reported, never hidden
        return {}, [("SyncBatchNorm comparison", f"{type(e).__name__}: {str(e)[-500:]}")]
    section = compare_sync(ranks, {"torch": "torch.nn.SyncBatchNorm"}.get(peer, peer))
    for q in section["quantities"]:
        log(f"  {q['name']:20s} {q['error']:.2e} {'pass' if q['ok'] else 'FAIL'}")
    return section, []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/gpu-report", help="directory for report.json and report.md")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--sanitizer-target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sanitizer_target:
        return sanitizer_target()

    from minibn.cuda.runtime import gpu_available

    if not gpu_available():
        print(NO_GPU)
        return 0
    import cupy as cp

    deadline = Deadline(args.budget)
    report = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": args.budget, "device": device_info(cp), "skipped": []}
    print(f"gpu_report on {report['device']['name']}, budget {args.budget:.0f} s")
    free, _ = cp.cuda.runtime.memGetInfo()
    cases, skipped = plan_checks(free)
    report["skipped"] += skipped
    print("correctness:")
    report["checks"], skipped = run_checks(cp, cases, deadline)
    report["skipped"] += skipped
    report["determinism"], skipped = run_determinism(cp, deadline)
    report["skipped"] += skipped
    print("timings:")
    report["timings"], skipped = run_timings(cp, deadline)
    report["skipped"] += skipped
    report["goals"] = goals(report["timings"].get("rows", []))
    print("SyncBatchNorm vs torch.nn.SyncBatchNorm:")
    report["sync_batchnorm"], skipped = run_sync_batchnorm(deadline)
    report["skipped"] += skipped
    print("compute-sanitizer:")
    report["sanitizer"], skipped = run_sanitizer(deadline)
    report["skipped"] += skipped
    report["duration_s"] = args.budget - deadline.left()
    paths = write_report(report, args.out)
    print(f"wrote {paths[0]} and {paths[1]} in {report['duration_s']:.0f} s")
    failed = [c for c in report["checks"] if not c["ok"]]
    failed += [q for q in report["sync_batchnorm"].get("quantities", []) if not q["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

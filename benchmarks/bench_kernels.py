"""Lesson-06 kernels against cuDNN and native ATen BatchNorm, as % of the measured copy bandwidth.

On a GPU: every step of ``minibn.cuda.progression.STEPS`` (L0, L1, K0-K5 forward, K6 backward)
at 256x64x56x56 float32 with its own launch settings, on buffers allocated once, next to
``torch.nn.functional.batch_norm`` with cuDNN and with ``torch.backends.cudnn.enabled = False``
(ATen's native kernels). Each time is the best of several groups of back-to-back launches
between CUDA events, turned into effective bandwidth at the traffic floor (12 B/element forward,
20 B/element backward) and compared with a device-to-device copy (8 B/element) measured alongside.
``benchmarks/gpu_report.py`` does this and more (correctness, determinism, compute-sanitizer) and
writes a report.

Without a GPU it says so and exits 0: the CPU executor checks correctness, never speed.
Usage: python benchmarks/bench_kernels.py [--launches 20] [--shape 256 64 56 56]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=20, help="back-to-back launches per timing")
    parser.add_argument("--shape", type=int, nargs=4, default=(256, 64, 56, 56))
    args = parser.parse_args(argv)

    from minibn.cuda.runtime import gpu_available

    if not gpu_available():
        print("bench_kernels: needs a CUDA GPU (cupy.is_available() is False here). The CPU executor "
              "runs these kernels for correctness only; its timings say nothing about GPU speed. "
              "Skipping.")
        return 0
    import cupy as cp

    from minibn.cuda import gpu_bench as gb
    from minibn.cuda import progression as P
    from minibn.cuda.runtime import runtime_for

    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.normal(1.0, 2.0, shape).astype(np.float32))
    dy = cp.asarray(rng.normal(0.0, 1.0, shape).astype(np.float32))
    C = shape[1]
    gamma = cp.asarray(rng.uniform(0.5, 2.0, C).astype(np.float32))
    beta = cp.asarray(rng.normal(0, 1, C).astype(np.float32))
    elements = x.size
    rt = runtime_for(x)
    timer = gb.Timer(cp, launches=args.launches)
    _, mean, _, invstd = P.forward("K5", x, gamma, beta)

    copy = timer(gb.copy_runner(cp, x))["ms"]
    copy_gbps = gb.bandwidth(gb.BYTES["copy"], elements, copy)
    torch_fns, why = gb.torch_runners(x, dy, gamma, beta)
    reference = {p: timer(fn)["ms"] for (name, p), fn in torch_fns.items() if name == "torch cuDNN"}
    rows = [gb.row("copy (device to device)", "copy", "copy", copy, elements, copy_gbps)]
    for step in P.STEPS:
        pass_ = "backward" if step.key == "K6" else "forward"
        if step.modes:
            given = {"x": x, "gamma": gamma, "beta": beta}
            if pass_ == "backward":
                given.update(dy=dy, mean=mean, invstd=invstd)
            full, _, _ = gb.step_runners(step, given, shape, rt)
        else:
            full = lambda s=step.key: P.forward(s, x, gamma, beta)  # noqa: E731 (CuPy's own ops)
        # One thread per channel takes ~1000x longer than the rest: fewer groups say enough.
        ms = timer(full, repeats=2 if step.key == "K0" else None)["ms"]
        rows.append(gb.row(f"{pass_} {step.key}: {step.title}", "ours", pass_, ms, elements, copy_gbps,
                           reference.get(pass_)))
    for (name, pass_), fn in torch_fns.items():
        rows.append(gb.row(f"{pass_} {name}", "torch", pass_, timer(fn)["ms"], elements, copy_gbps,
                           reference.get(pass_)))

    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, shape {shape} float32, "
          f"best of groups of {args.launches} back-to-back launches")
    print(f"copy bandwidth measured: {copy_gbps:.0f} GB/s" + (f" ({why}: no torch comparison)" if why else ""))
    print(f"{'implementation':60s} {'time ms':>9s} {'GB/s':>7s} {'% copy':>7s} {'x cuDNN':>8s}")
    for r in rows:
        ratio = f"{r['x_reference']:8.2f}" if r["x_reference"] else f"{'n/a':>8s}"
        print(f"{r['name']:60s} {r['ms']:9.3f} {r['gbps']:7.0f} {r['pct_copy']:6.1f}% {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

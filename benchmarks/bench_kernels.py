"""Lesson-06 kernels against cuDNN and native ATen BatchNorm, as % of the measured copy bandwidth.

The quick table of ``benchmarks/gpu_report.py``'s timing part, without its correctness,
determinism and sanitizer parts: every step of ``minibn.cuda.progression.STEPS`` (L0, L1, K0-K5
forward, K6 backward) at 256x64x56x56 float32 with its own launch settings, on buffers allocated
once, next to ``torch.nn.functional.batch_norm`` with cuDNN and with cuDNN disabled (ATen's native
kernels). Each time is the best of several groups of back-to-back launches between CUDA events,
turned into effective bandwidth at the traffic floor (12 B/element forward, 20 B/element backward)
and compared with a device-to-device copy (8 B/element) measured alongside.

Without a GPU it says so and exits 0: the CPU executor checks correctness, never speed.
Usage: python benchmarks/bench_kernels.py [--launches 20] [--shape 256 64 56 56]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_report  # noqa: E402 (the one timing loop, beside this script)


def table(timings, skipped):
    """The report's whole-step rows (not its per-phase ones) as printable lines."""
    lines = [f"copy bandwidth measured: {timings['copy_gbps']:.0f} GB/s"]
    lines += [f"skipped {what}: {why}" for what, why in skipped]
    lines.append(f"{'implementation':60s} {'time ms':>9s} {'GB/s':>7s} {'% copy':>7s} {'x cuDNN':>8s}")
    for r in timings["rows"]:
        if r["phase"] is None:
            ratio = f"{r['x_reference']:8.2f}" if r["x_reference"] else f"{'n/a':>8s}"
            lines.append(f"{r['name']:60s} {r['ms']:9.3f} {r['gbps']:7.0f} {r['pct_copy']:6.1f}% {ratio}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=20, help="back-to-back launches per timing")
    parser.add_argument("--shape", type=int, nargs=4, default=gpu_report.TIMING_SHAPE)
    args = parser.parse_args(argv)

    from minibn.cuda.runtime import gpu_available

    if not gpu_available():
        print("bench_kernels: needs a CUDA GPU (cupy.is_available() is False here). The CPU executor "
              "runs these kernels for correctness only; its timings say nothing about GPU speed. "
              "Skipping.")
        return 0
    import cupy as cp

    from minibn.cuda import gpu_bench as gb

    timings, skipped = gpu_report.run_timings(
        cp, gpu_report.Deadline(float("inf")), log=lambda *_: None,
        timer=gb.Timer(cp, launches=args.launches), shape=tuple(args.shape))
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, shape {tuple(args.shape)} "
          f"float32, best of groups of {args.launches} back-to-back launches")
    print("\n".join(table(timings, skipped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lesson-06 kernels against cuDNN and native ATen BatchNorm, as % of the measured copy bandwidth.

On a GPU: every forward step (L0, L1, K0-K5) and the K6 backward at 256x64x56x56 float32, next to
``torch.nn.functional.batch_norm`` with cuDNN and with ``torch.backends.cudnn.enabled = False``
(ATen's native kernels), all timed with CUDA events in the same run, interleaved, min of repeats.
Each time is turned into effective bandwidth at the traffic floor (12 B/element forward, 20 B/element
backward) and compared with a device-to-device copy (8 B/element) measured alongside.

Without a GPU it says so and exits 0: the CPU executor checks correctness, never speed.
Usage: python benchmarks/bench_kernels.py [--repeats 10] [--shape 256 64 56 56]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

FWD_BYTES, BWD_BYTES, COPY_BYTES = 12, 20, 8


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--shape", type=int, nargs=4, default=(256, 64, 56, 56))
    args = parser.parse_args()

    from minibn.cuda.runtime import gpu_available

    if not gpu_available():
        print("bench_kernels: needs a CUDA GPU (cupy.is_available() is False here). The CPU executor "
              "runs these kernels for correctness only; its timings say nothing about GPU speed. "
              "Skipping.")
        return 0
    import cupy as cp

    from minibn.cuda import progression as P

    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.normal(1.0, 2.0, shape).astype(np.float32))
    dy = cp.asarray(rng.normal(0.0, 1.0, shape).astype(np.float32))
    C = shape[1]
    gamma = cp.asarray(rng.uniform(0.5, 2.0, C).astype(np.float32))
    beta = cp.asarray(rng.normal(0, 1, C).astype(np.float32))
    elements = x.size
    copy_out = cp.empty_like(x)

    _, mean, _, invstd = P.forward("K5", x, gamma, beta)
    impls = {"copy (device to device)": (lambda: copy_out.__setitem__(Ellipsis, x), COPY_BYTES)}
    for step in ("L0", "L1", "K0", "K1", "K2", "K3", "K4", "K5"):
        impls[f"forward {step}: {dict((s.key, s.title) for s in P.STEPS)[step]}"] = (
            (lambda s=step: P.forward(s, x, gamma, beta)), FWD_BYTES)
    impls["backward K6"] = (lambda: P.backward(dy, x, mean, invstd, gamma), BWD_BYTES)
    impls.update(_torch_impls(x, dy, gamma, beta))

    for fn, _ in impls.values():  # compile and warm up
        fn()
    cp.cuda.Device().synchronize()
    best = {name: float("inf") for name in impls}
    for r in range(args.repeats):
        for name, (fn, _) in impls.items():
            if name.startswith("forward K0") and r > 0:
                continue  # one thread per channel takes ~1000x longer; one run says enough
            best[name] = min(best[name], _time_ms(cp, fn))

    copy_gbs = COPY_BYTES * elements / best["copy (device to device)"] / 1e6
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, shape {shape} float32, "
          f"min of {args.repeats} interleaved repeats")
    print(f"copy bandwidth measured: {copy_gbs:.0f} GB/s")
    ref_fwd = best.get("forward torch cuDNN")
    ref_bwd = best.get("backward torch cuDNN")
    print(f"{'implementation':58s} {'time ms':>9s} {'GB/s':>7s} {'% copy':>7s} {'x cuDNN':>8s}")
    for name, (_, per_element) in impls.items():
        ms = best[name]
        gbs = per_element * elements / ms / 1e6
        ref = ref_bwd if name.startswith("backward") else ref_fwd
        ratio = f"{ms / ref:8.2f}" if ref else f"{'n/a':>8s}"
        print(f"{name:58s} {ms:9.3f} {gbs:7.0f} {100 * gbs / copy_gbs:6.1f}% {ratio}")
    return 0


def _time_ms(cp, fn):
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end)


def _torch_impls(x, dy, gamma, beta):
    """torch's batch_norm on the same device memory (DLPack, no copy), cuDNN on and off."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("(torch not installed: no cuDNN / ATen comparison)")
        return {}
    if not torch.cuda.is_available():
        print("(this torch build has no CUDA: no cuDNN / ATen comparison)")
        return {}
    tx = torch.from_dlpack(x).requires_grad_(True)
    tdy, tg, tb = torch.from_dlpack(dy), torch.from_dlpack(gamma), torch.from_dlpack(beta)

    def fwd(cudnn):
        def run():
            torch.backends.cudnn.enabled = cudnn
            with torch.no_grad():
                F.batch_norm(tx, None, None, tg, tb, training=True)
        return run

    def bwd(cudnn):
        torch.backends.cudnn.enabled = cudnn
        y = F.batch_norm(tx, None, None, tg, tb, training=True)

        def run():
            torch.backends.cudnn.enabled = cudnn
            torch.autograd.grad(y, tx, tdy, retain_graph=True)
        return run

    return {
        "forward torch cuDNN": (fwd(True), FWD_BYTES),
        "forward torch ATen native (cudnn disabled)": (fwd(False), FWD_BYTES),
        "backward torch cuDNN": (bwd(True), BWD_BYTES),
        "backward torch ATen native (cudnn disabled)": (bwd(False), BWD_BYTES),
    }


if __name__ == "__main__":
    sys.exit(main())

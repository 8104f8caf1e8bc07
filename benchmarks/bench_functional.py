"""minibn.functional forward+backward against torch's native F.batch_norm, on one CPU thread.

For each shape, the two implementations and a memcpy of an input-sized buffer are timed in the
same run, interleaved (A, B, copy, A, B, copy, ...), and the minimum over repeats is kept: on a
shared machine the minimum is the least disturbed sample, and interleaving means a burst of
load from other processes hits both sides alike rather than one of them. Times are the thread's
CPU time (``time.thread_time``), which leaves out the time spent waiting for a core.

Printed per shape:
- ``minibn`` and ``torch``: min time of one forward+backward (training mode, affine);
- ``ratio``: minibn / torch (the target is <= 1.3 at 64x64x32x32 float32);
- ``GB/s``: effective bandwidth, ``bytes / time`` where ``bytes`` counts what a fused
  forward+backward must at least move (forward reads x and writes out; backward reads dout and
  x/x_hat and writes dx: 5 tensors);
- ``copy GB/s``: ``np.copyto`` of an input-sized buffer (read + write = 2 tensors), the
  machine's practical memory bandwidth measured in the same run.

Usage: ``python benchmarks/bench_functional.py [--repeats R] [--quick]`` (``make bench`` runs it);
``ATEN_CPU_CAPABILITY=avx2`` in the environment makes torch use its AVX2 kernels.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from minibn import functional as bn  # noqa: E402

SHAPES = [
    ((256, 64), np.float32),
    ((64, 64, 32, 32), np.float32),
    ((32, 128, 16, 16), np.float32),
    ((64, 64, 32, 32), np.float64),
]
TARGET = ((64, 64, 32, 32), np.float32, 1.3)


def _minibn_step(x, gamma, beta, dout):
    def step():
        _, cache = bn.batchnorm_forward(x, gamma, beta, 1e-5)
        bn.batchnorm_backward(dout, cache)

    return step


def _torch_step(x, gamma, beta, dout):
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(gamma).requires_grad_(True)
    bt = torch.from_numpy(beta).requires_grad_(True)
    dt = torch.from_numpy(dout)

    def step():
        out = F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
        torch.autograd.grad(out, (xt, gt, bt), dt)

    return step


def _copy_step(x):
    dst = np.empty_like(x)
    return lambda: np.copyto(dst, x)


def _min_times(steps, repeats, inner):
    """Interleave ``steps`` for ``repeats`` rounds of ``inner`` calls each; min seconds per call."""
    best = [float("inf")] * len(steps)
    for step in steps:  # warm-up: first-call allocations, lazy imports
        step()
    for _ in range(repeats):
        for i, step in enumerate(steps):
            t0 = time.thread_time()
            for _ in range(inner):
                step()
            best[i] = min(best[i], (time.thread_time() - t0) / inner)
    return best


def bench(shape, dtype, repeats, inner=3):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    c = shape[1]
    gamma = rng.uniform(0.5, 2.0, c).astype(dtype)
    beta = rng.normal(0.0, 1.0, c).astype(dtype)
    dout = rng.normal(0.0, 1.0, shape).astype(dtype)
    steps = [_minibn_step(x, gamma, beta, dout), _torch_step(x, gamma, beta, dout), _copy_step(x)]
    t_bn, t_torch, t_copy = _min_times(steps, repeats, inner)
    nbytes = x.nbytes
    return {
        "minibn": t_bn,
        "torch": t_torch,
        "ratio": t_bn / t_torch,
        "gbps": 5 * nbytes / t_bn / 1e9,
        "torch_gbps": 5 * nbytes / t_torch / 1e9,
        "copy_gbps": 2 * nbytes / t_copy / 1e9,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="only the target shape")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = [(TARGET[0], TARGET[1])] if args.quick else SHAPES
    repeats = args.repeats
    print(f"minibn forward+backward vs torch F.batch_norm, 1 thread, min CPU time of {repeats} "
          f"interleaved repeats (torch {torch.__version__} with "
          f"{torch.backends.cpu.get_cpu_capability()} kernels, numpy {np.__version__})")
    print(f"{'shape':>20} {'dtype':>8} {'minibn ms':>10} {'torch ms':>9} {'ratio':>6} "
          f"{'GB/s':>6} {'torch GB/s':>10} {'copy GB/s':>9}")
    for shape, dtype in shapes:
        r = bench(shape, dtype, repeats)
        flag = ""
        if (shape, dtype) == (TARGET[0], TARGET[1]):
            flag = f"  target <= {TARGET[2]}: {'met' if r['ratio'] <= TARGET[2] else 'MISSED'}"
        print(f"{'x'.join(map(str, shape)):>20} {np.dtype(dtype).name:>8} {r['minibn'] * 1e3:10.2f} "
              f"{r['torch'] * 1e3:9.2f} {r['ratio']:6.2f} {r['gbps']:6.1f} {r['torch_gbps']:10.1f} "
              f"{r['copy_gbps']:9.1f}{flag}")


if __name__ == "__main__":
    main()

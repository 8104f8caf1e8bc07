"""A training step (forward + backward) of minibn.nn.BatchNorm2d vs torch.nn.BatchNorm2d.

Both modules run in the same process on the same inputs, one thread, with their repeats
interleaved (A, B, A, B, ...) so that load from other processes hits both alike; the ratio of
the minimum times is printed (ratio > 1: minibn is slower). Times are the thread's CPU time
(``time.thread_time``): on a shared machine wall time also counts the time the thread waits
for a core, which says more about the neighbours than about either implementation. Targets
(issue 13): ratio <= 1.2 on NCHW (contiguous) inputs, <= 1.5 on channels_last ones.

    .venv/bin/python benchmarks/bench_module.py [--repeats 15] [--dtype float32]
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/bench_module.py   # torch's AVX2 kernels
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from minibn.nn import BatchNorm2d  # noqa: E402

SHAPES = [(32, 16, 32, 32), (64, 64, 16, 16), (128, 256, 8, 8), (16, 32, 56, 56)]
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
TARGETS = {"contiguous": 1.2, "channels_last": 1.5}


def step_fn(module, x, grad):
    def step():
        x.grad = None
        module.weight.grad = None
        module.bias.grad = None
        module(x).backward(grad)
    return step


def time_once(step, inner):
    start = time.thread_time()
    for _ in range(inner):
        step()
    return (time.thread_time() - start) / inner


def bench(shape, dtype, memory_format, repeats, inner):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype).to(memory_format=memory_format).requires_grad_()
    grad = torch.randn(shape, dtype=dtype).to(memory_format=memory_format)
    steps = {
        "minibn": step_fn(BatchNorm2d(shape[1], dtype=dtype), x, grad),
        "torch": step_fn(torch.nn.BatchNorm2d(shape[1], dtype=dtype), x, grad),
    }
    for step in steps.values():
        step()  # warm-up
    best = {name: float("inf") for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            best[name] = min(best[name], time_once(step, inner))
    return best


def geometric_mean(values):
    return torch.tensor(values, dtype=torch.float64).log().mean().exp().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__} ({capability} kernels), 1 thread, {args.dtype}, "
          f"min CPU time of {args.repeats} interleaved repeats of {args.inner} steps")
    print(f"{'shape (N, C, H, W)':<22}{'layout':<15}{'minibn ms':>10}{'torch ms':>10}{'ratio':>8}")
    ratios = {layout: [] for layout in LAYOUTS}
    for shape in SHAPES:
        for layout, fmt in LAYOUTS.items():
            best = bench(shape, dtype, fmt, args.repeats, args.inner)
            ratio = best["minibn"] / best["torch"]
            ratios[layout].append(ratio)
            print(f"{str(shape):<22}{layout:<15}{best['minibn'] * 1e3:>10.3f}"
                  f"{best['torch'] * 1e3:>10.3f}{ratio:>8.2f}")
    for layout, values in ratios.items():
        geo, target = geometric_mean(values), TARGETS[layout]
        print(f"{layout:<15} ratios {min(values):.2f}-{max(values):.2f}, geometric mean {geo:.2f} "
              f"(target <= {target}: {'met' if max(values) <= target else 'MISSED'})")


if __name__ == "__main__":
    main()

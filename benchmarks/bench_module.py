"""A training step (forward + backward) of minibn.nn.BatchNorm2d vs torch.nn.BatchNorm2d.

Both modules run in the same process on the same inputs, one thread, with their repeats
interleaved (A, B, A, B, ...) so that load from other processes hits both alike; the ratio of
the minimum times is printed (ratio > 1: minibn is slower). Target: ratio <= 1.2.

    .venv/bin/python benchmarks/bench_module.py [--repeats 15] [--dtype float32]
"""
from __future__ import annotations

import argparse
import time

import torch

from minibn.nn import BatchNorm2d

SHAPES = [(32, 16, 32, 32), (64, 64, 16, 16), (128, 256, 8, 8), (16, 32, 56, 56)]


def step_fn(module, x, grad):
    def step():
        x.grad = None
        module.weight.grad = None
        module.bias.grad = None
        module(x).backward(grad)
    return step


def time_once(step, inner):
    start = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - start) / inner


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, 1 thread, {args.dtype}, min of {args.repeats} interleaved "
          f"repeats of {args.inner} steps")
    print(f"{'shape (N, C, H, W)':<22}{'layout':<15}{'minibn ms':>10}{'torch ms':>10}{'ratio':>8}")
    ratios = []
    for shape in SHAPES:
        for fmt_name, fmt in (("contiguous", torch.contiguous_format),
                              ("channels_last", torch.channels_last)):
            best = bench(shape, dtype, fmt, args.repeats, args.inner)
            ratio = best["minibn"] / best["torch"]
            ratios.append(ratio)
            print(f"{str(shape):<22}{fmt_name:<15}{best['minibn'] * 1e3:>10.3f}"
                  f"{best['torch'] * 1e3:>10.3f}{ratio:>8.2f}")
    geo = torch.tensor(ratios).log().mean().exp().item()
    print(f"geometric-mean ratio minibn/torch: {geo:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()

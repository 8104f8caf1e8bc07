"""``SyncBatchNorm``: batch norm over one batch split across the processes of a group.

Data-parallel training gives each process a slice of the batch; plain BN would normalize each
slice with its own statistics (a smaller, noisier batch). ``SyncBatchNorm`` computes the
statistics of the whole batch: each process sends its per-channel (count, mean, M2) and every
process merges the triples with Chan's formula (``minibn.functional.pooled_moments``); the
backward all-reduces the two per-channel gradient sums that batch norm's closed form needs,
``sum(dout)`` and ``sum(dout * x_hat)``. Why triples and not (count, sum, sum of squares): the
numerics are in ``docs/distributed-and-renorm.md``.

It needs only ``torch.distributed`` collectives, so it runs on gloo (CPU processes, a laptop)
as on NCCL (GPUs); torch's own ``torch.nn.SyncBatchNorm`` accepts only GPU tensors. Outside an
initialized group of more than one process, and in eval mode, it is ``BatchNorm*d``.
The weight and bias gradients are each process's own sums, as torch's: the data-parallel
wrapper (DDP) adds them up across processes.

``run_distributed(fn, world_size)`` starts a local gloo group on loopback, runs
``fn(rank, world_size, *args)`` in each process and always shuts the group and the processes
down, also when one of them fails.
"""
from __future__ import annotations

import datetime
import os
import pickle
import queue
import socket

import torch

from minibn.conventions import (
    average_factor,
    channel_shape,
    check_batch_size,
    update_running_stat,
    values_per_channel,
)
from minibn.functional import pooled_moments
from minibn.nn.function import channel_sum
from minibn.nn.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction", "convert_sync_batchnorm", "free_port",
           "run_distributed"]

UNAVAILABLE = ("torch.distributed is not available in this build of torch (torch.distributed."
               "is_available() is False), so processes cannot exchange batch statistics; install "
               "a torch wheel with distributed support (the default Linux, macOS and Windows "
               "wheels have it)")


def _dist():
    if not torch.distributed.is_available():
        raise RuntimeError(UNAVAILABLE)
    return torch.distributed


def _world_size(group):
    """Processes in ``group``, or 1 when there is no initialized process group."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def _channel_sum(t):
    """``channel_sum``, also for a process whose share of the batch is empty."""
    return channel_sum(t) if t.numel() else t.new_zeros(t.shape[1])


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm whose statistics and gradient sums span the process group."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        dist = _dist()
        c = x.shape[1]
        n = values_per_channel(x.shape)
        # Each process's (count, mean, M2), with M2 from its own centered values (two passes).
        # Packed in float64: counts stay exact, and the merge adds no float32 rounding.
        if n > 0:
            mean = channel_sum(x) / n
            centered = x - mean.view(channel_shape(x))
            m2 = channel_sum(centered * centered)
        else:
            mean = m2 = x.new_zeros(c)
        # The sample count rides along, to name the whole batch's size in an error.
        sizes = torch.tensor([n, x.shape[0]], dtype=torch.float64, device=x.device)
        triple = torch.cat([sizes, mean.to(torch.float64), m2.to(torch.float64)])
        gathered = [torch.empty_like(triple) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, triple, group=group)
        counts = [int(t[0]) for t in gathered]
        total = sum(counts)
        # Every process sees the same global size, so all of them raise here or none does.
        size = (sum(int(t[1]) for t in gathered),) + tuple(x.shape[1:])
        try:
            check_batch_size(size, allow_empty=False)
        except ValueError as e:
            raise ValueError(f"{e}, the batch of all {len(counts)} processes") from None
        seen = [(k, t[2:c + 2], t[c + 2:] / k) for k, t in zip(counts, gathered) if k > 0]
        g_mean, g_var_unbiased = pooled_moments(*zip(*seen))
        g_var = g_var_unbiased * (total - 1) / total
        if running_mean is not None:
            with torch.no_grad():
                update_running_stat(running_mean, g_mean.to(running_mean.dtype), momentum)
                update_running_stat(running_var, g_var_unbiased.to(running_var.dtype), momentum)
        shape = channel_shape(x)
        inv_std = torch.rsqrt(g_var + eps).to(x.dtype)
        x_hat = (x - g_mean.to(x.dtype).view(shape)) * inv_std.view(shape)
        out = x_hat if weight is None else x_hat * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.total, ctx.group = total, group
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        dist = _dist()
        x_hat, inv_std, weight = ctx.saved_tensors
        dout = dout.contiguous()
        local_dbeta = _channel_sum(dout)
        local_dgamma = _channel_sum(dout * x_hat)
        # One all-reduce carries both sums: batch norm's dx needs them over the whole batch.
        sums = torch.cat([local_dbeta, local_dgamma])
        dist.all_reduce(sums, group=ctx.group)
        c = x_hat.shape[1]
        dbeta, dgamma = sums[:c], sums[c:]
        shape = channel_shape(x_hat)
        gain = inv_std if weight is None else inv_std * weight
        dx = dout - (dbeta.view(shape) + x_hat * dgamma.view(shape)) / ctx.total
        dx *= gain.view(shape)
        dweight = local_dgamma if weight is not None and ctx.needs_input_grad[1] else None
        dbias = local_dbeta if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the batch of every process in
    ``process_group`` (the default group if None); torch's ``SyncBatchNorm`` arguments."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None, *,
                 bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.process_group = process_group

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """``convert_sync_batchnorm(module, process_group)``, where torch's users call it."""
        return convert_sync_batchnorm(module, process_group)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input):
        if not self.training or _world_size(self.process_group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels on axis 1, got input of "
                             f"size {tuple(input.shape)}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = average_factor(self.momentum, self.num_batches_tracked)
        track = self.track_running_stats
        # Half-precision inputs are normalized in float32, as batch norm's are.
        compute = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
        weight, bias = (None if p is None else p.to(compute) for p in (self.weight, self.bias))
        out = SyncBatchNormFunction.apply(
            input.to(compute), weight, bias, self.running_mean if track else None,
            self.running_var if track else None, self.eps, factor, self.process_group)
        return out.to(input.dtype)


def convert_sync_batchnorm(module, process_group=None):
    """``module`` with every ``BatchNorm1d/2d/3d`` (torch's or minibn's) replaced by a
    ``SyncBatchNorm`` sharing its parameters and buffers, as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does."""
    out = module
    if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, BatchNorm1d, BatchNorm2d,
                           BatchNorm3d)) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group,
                            bias=module.bias is not None)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


# ---------------------------------------------------------------------------------------------
# A local process group


def free_port():
    """A TCP port on the loopback interface that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, fn, world_size, port, timeout_s, results, args):
    # Gloo binds to the address the host name resolves to unless told otherwise: pin it to
    # loopback, so the group never needs (or waits for) a network.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if os.uname().sysname == "Darwin" else "lo")
    dist = _dist()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        # Pickled here by value: torch's queues would pass tensors as shared memory, which
        # the parent could no longer open once this process has exited.
        results.put((rank, pickle.dumps(fn(rank, world_size, *args))))
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size, *args, timeout_s=60):
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh CPU processes that form a
    gloo process group on loopback; return the results in rank order.

    ``fn`` must be importable (a module-level function) and its result picklable. If a process
    raises, the others are terminated and the error is raised here
    (``torch.multiprocessing.ProcessRaisedException``, with the failing rank's traceback); a
    collective that waits longer than ``timeout_s`` fails instead of hanging.
    """
    _dist()
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    mp = torch.multiprocessing.get_context("spawn")
    results = mp.Queue()
    context = torch.multiprocessing.start_processes(
        _worker, args=(fn, world_size, free_port(), timeout_s, results, args),
        nprocs=world_size, join=False, start_method="spawn")
    by_rank = {}
    try:
        # Results are read while the processes run: one that is larger than the pipe's buffer
        # would otherwise block its sender, and join() would wait for it forever.
        while len(by_rank) < world_size:
            try:
                rank, result = results.get(timeout=0.1)
                by_rank[rank] = pickle.loads(result)
            except queue.Empty:
                # join raises, terminating the others, if a process has failed
                if context.join(timeout=0) and results.empty():
                    raise RuntimeError(f"the processes exited having sent {len(by_rank)} of "
                                       f"{world_size} results") from None
        while not context.join():
            pass
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
            process.join()
    return [by_rank[r] for r in range(world_size)]

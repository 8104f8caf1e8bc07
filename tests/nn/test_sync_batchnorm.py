"""SyncBatchNorm over real gloo process groups of 2 and 3 CPU processes: on every rank, outputs,
input gradients, the weight/bias gradients summed over ranks and the running statistics equal
torch's BatchNorm on the concatenated batch (float64), for equal and unequal shares of the
batch and a process with none. On the same ranks torch's own ``torch.nn.SyncBatchNorm`` runs on
CPU tensors (``torch_sync_on_cpu``), and each rank's results equal its. Plus
convert_sync_batchnorm, and the group's shutdown on errors.

One process group per world size runs every case (starting processes costs seconds each); the
3-process group is marked slow.
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from minibn import nn as mnn
from minibn.nn import sync_batchnorm

from . import torch_sync_on_cpu

F64 = dict(rtol=1e-10, atol=1e-12)
# (per-rank batch sizes, the shape of one sample): 2-D, 3-D and 4-D inputs
CASES = {2: [((3, 3), (4,)), ((4, 1), (3, 2, 2)), ((0, 5), (2, 3))],
         3: [((2, 2, 2), (3, 2, 2)), ((5, 0, 1), (2, 3)), ((1, 1, 1), (4,))]}
STEPS = 3  # training steps, then one in eval


def _data(sizes, sample, step):
    gen = torch.Generator().manual_seed(100 * step + sum(sizes))
    shape = (sum(sizes),) + sample
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2
    return x, torch.randn(shape, generator=gen, dtype=torch.float64)


def _module(channels, cls=mnn.SyncBatchNorm):
    m = cls(channels, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.linspace(0.5, 1.5, channels, dtype=torch.float64))
        m.bias.copy_(torch.linspace(-1.0, 1.0, channels, dtype=torch.float64))
    return m


def _grad(t):
    # torch's function returns no gradient from a rank with an empty batch: autograd's zeros
    return torch.zeros_like(t) if t.grad is None else t.grad.clone()


def _run_steps(m, forward, sizes, sample, rank):
    lo = sum(sizes[:rank])
    steps = []
    for step in range(STEPS + 1):
        m.train(step < STEPS)
        x, g = _data(sizes, sample, step)
        x = x[lo:lo + sizes[rank]].clone().requires_grad_()
        y = forward(m, x)
        y.backward(g[lo:lo + sizes[rank]])
        steps.append((y.detach(), _grad(x), _grad(m.weight), _grad(m.bias),
                      m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)))
        m.zero_grad()
    return steps


def _run_cases(rank, world_size):
    """Per case, each step's results on this rank from minibn's module and from torch's."""
    return [{"minibn": _run_steps(_module(sample[0]), lambda m, x: m(x), sizes, sample, rank),
             "torch": _run_steps(_module(sample[0], torch.nn.SyncBatchNorm),
                                 torch_sync_on_cpu.forward, sizes, sample, rank)}
            for sizes, sample in CASES[world_size]]


# 3 processes take 15-17 s on 2 busy cores (each imports torch), close to the quick suite's limit
@pytest.fixture(scope="module", params=[2, pytest.param(3, marks=pytest.mark.slow)],
                ids=lambda w: f"{w}-processes")
def world(request):
    start = time.monotonic()
    results = mnn.run_distributed(_run_cases, request.param, timeout_s=60)
    return request.param, results, time.monotonic() - start


@pytest.mark.parametrize("impl", ["minibn", "torch"])  # torch's: the second oracle is synced
@pytest.mark.parametrize("case", range(3))
def test_every_rank_matches_batch_norm_on_the_concatenated_batch(world, case, impl):
    world_size, results, _ = world
    sizes, sample = CASES[world_size][case]
    ref = _module(sample[0])
    for step in range(STEPS + 1):
        ref.train(step < STEPS)
        x, g = _data(sizes, sample, step)
        x.requires_grad_()
        y = torch.nn.functional.batch_norm(x, ref.running_mean, ref.running_var, ref.weight,
                                           ref.bias, ref.training, 0.3, ref.eps)
        y.backward(g)
        if ref.training:
            ref.num_batches_tracked += 1
        per_rank = [results[rank][case][impl][step] for rank in range(world_size)]
        torch.testing.assert_close(torch.cat([r[0] for r in per_rank]), y.detach(), **F64)
        torch.testing.assert_close(torch.cat([r[1] for r in per_rank]), x.grad, **F64)
        torch.testing.assert_close(sum(r[2] for r in per_rank), ref.weight.grad, **F64)
        torch.testing.assert_close(sum(r[3] for r in per_rank), ref.bias.grad, **F64)
        for r in per_rank:  # the same running statistics everywhere
            torch.testing.assert_close(r[4], ref.running_mean, **F64)
            torch.testing.assert_close(r[5], ref.running_var, **F64)
            assert r[6] == int(ref.num_batches_tracked)
        ref.zero_grad()


@pytest.mark.parametrize("case", range(3))
def test_every_rank_matches_torchs_sync_batchnorm(world, case):
    world_size, results, _ = world
    names = ["out", "input grad", "weight grad", "bias grad", "running_mean", "running_var"]
    for rank in range(world_size):
        for step, (ours, theirs) in enumerate(zip(results[rank][case]["minibn"],
                                                  results[rank][case]["torch"])):
            for name, a, b in zip(names, ours, theirs):
                torch.testing.assert_close(a, b, **F64, msg=lambda m: (
                    f"rank {rank}, step {step}, {name}: {m}"))
            assert ours[6] == theirs[6], f"rank {rank}, step {step}: num_batches_tracked"


def test_a_process_group_starts_and_stops_in_seconds(world):
    world_size, _, seconds = world
    assert seconds < 40, f"{world_size} processes took {seconds:.1f} s"


def _fail_on_rank_1(rank, world_size, pid_dir):
    with open(os.path.join(pid_dir, str(rank)), "w") as f:
        f.write(str(os.getpid()))
    m = mnn.SyncBatchNorm(2, dtype=torch.float64)
    try:  # a global batch of one value: every rank refuses it, none waits for the others
        m(torch.randn(1 - rank, 2, dtype=torch.float64))
    except ValueError as e:
        message = str(e)
    if rank == 1:
        raise RuntimeError(f"boom on rank 1 after: {message}")
    time.sleep(600)  # rank 0 hangs (a collective would notice the dead peer and fail too)
    return message


def test_an_error_in_one_process_stops_all_of_them_and_is_raised(tmp_path):
    start = time.monotonic()
    with pytest.raises(torch.multiprocessing.ProcessRaisedException,
                       match=r"boom on rank 1 after: Expected .* got input size \(1, 2\), "
                             r"the batch of all 2 processes"):
        mnn.run_distributed(_fail_on_rank_1, 2, str(tmp_path), timeout_s=60)
    assert time.monotonic() - start < 40  # rank 0 was stopped, not waited for
    pids = [int((tmp_path / str(rank)).read_text()) for rank in range(2)]
    for pid in pids:  # gone and reaped: no hanging process, no zombie
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_without_torch_distributed_the_message_says_so(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="torch.distributed is not available"):
        mnn.run_distributed(_run_cases, 2)
    # without a group there is nothing to synchronize with: SyncBatchNorm is batch norm
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(mnn.SyncBatchNorm(3, dtype=torch.float64)(x),
                               torch.nn.BatchNorm1d(3, dtype=torch.float64)(x), **F64)


def test_outside_a_process_group_it_is_batch_norm_with_torchs_interface():
    assert not torch.distributed.is_initialized()
    ours, theirs = mnn.SyncBatchNorm(3), torch.nn.SyncBatchNorm(3)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(ours(x), torch.nn.functional.batch_norm(
        x, None, None, training=True))
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        ours(torch.randn(3))


def test_convert_sync_batchnorm_swaps_every_batch_norm_and_shares_its_state():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.2),
                              torch.nn.Sequential(mnn.BatchNorm2d(4, affine=False)),
                              torch.nn.GroupNorm(2, 4), mnn.InstanceNorm2d(4))
    net(torch.randn(2, 3, 5, 5))
    bn, inner = net[1], net[2][0]
    converted = mnn.SyncBatchNorm.convert_sync_batchnorm(net)  # torch's spelling
    assert type(converted[1]) is mnn.SyncBatchNorm
    converted = mnn.convert_sync_batchnorm(net)
    kinds = [type(m) for m in converted.modules()]
    assert kinds.count(mnn.SyncBatchNorm) == 2
    assert torch.nn.GroupNorm in kinds and mnn.InstanceNorm2d in kinds  # not batch norms
    sync = converted[1]
    assert sync.weight is bn.weight and sync.running_mean is bn.running_mean
    assert sync.momentum == 0.2 and int(sync.num_batches_tracked) == 1
    assert converted[2][0].weight is None and converted[2][0].running_var is inner.running_var
    # torch's conversion gives the same structure
    theirs = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
        torch.nn.Sequential(torch.nn.BatchNorm2d(4, momentum=0.2)))
    assert repr(theirs[0]) == repr(mnn.convert_sync_batchnorm(
        torch.nn.Sequential(torch.nn.BatchNorm2d(4, momentum=0.2)))[0])


def test_free_port_is_a_bindable_loopback_port():
    import socket
    port = sync_batchnorm.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))

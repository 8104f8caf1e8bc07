"""Direct comparisons of minibn's modules with torch's that torch's generic suite does not make.

- Every BatchNorm ``ModuleInfo`` sample (zero-size batches included), in float64: several
  training steps then eval, with outputs, every gradient, the running statistics and
  ``num_batches_tracked`` equal to torch's to rtol 1e-10, in both memory formats.
- A small conv net with minibn's BN under ``torch.compile`` and ``torch.jit.trace`` gives the
  results of the same net with torch's BN, run eagerly.
- ``torch.func.vmap`` over a batch of inputs (eval mode; and training without running stats).
- ``state_dict`` both ways, including checkpoints from torch 1.x (no ``num_batches_tracked``).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch.testing._internal.common_modules import FunctionInput, module_db

from minibn import nn as mnn

PAIRS = {torch.nn.BatchNorm1d: mnn.BatchNorm1d, torch.nn.BatchNorm2d: mnn.BatchNorm2d,
         torch.nn.BatchNorm3d: mnn.BatchNorm3d}
F64 = dict(rtol=1e-10, atol=1e-12)


def _module_samples():
    for info in module_db:
        if info.module_cls not in PAIRS:
            continue
        samples = info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                          requires_grad=False, training=True)
        for sample in samples:
            name = f"{info.module_cls.__name__}-{sample.desc or 'default'}"
            yield pytest.param(info.module_cls, sample, False, id=name)
            if sample.forward_input.args[0].dim() >= 4:  # channels_last exists for 4-D and 5-D
                yield pytest.param(info.module_cls, sample, True, id=name + "-channels_last")


SAMPLES = list(_module_samples())
assert len(SAMPLES) == 22 + 14, "torch's BatchNorm ModuleInfo samples changed; review this test"


def _pair(torch_cls, constructor_input, dtype=torch.float64, seed=0):
    args, kwargs = constructor_input.args, constructor_input.kwargs
    theirs = torch_cls(*args, **kwargs, dtype=dtype)
    ours = PAIRS[torch_cls](*args, **kwargs, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():  # not the default ones and zeros: a wrong sum shows
            p.copy_(torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _assert_same_state(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("num_batches_tracked"):
            assert a[key].dtype == b[key].dtype == torch.long
            assert a[key].item() == b[key].item(), key
        else:
            torch.testing.assert_close(a[key], b[key], **F64, msg=key)


def _step(ours, theirs, x, grad):
    """Forward and backward through both; outputs, layouts and every gradient equal."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, **F64)
    for fmt in (torch.channels_last, torch.channels_last_3d):
        if ya.dim() == (4 if fmt == torch.channels_last else 5) and ya.numel():
            assert ya.is_contiguous(memory_format=fmt) == yb.is_contiguous(memory_format=fmt)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, **F64)
    for (name, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
        assert pb.grad is not None
        torch.testing.assert_close(pa.grad, pb.grad, **F64, msg=name)
        pa.grad = pb.grad = None


@pytest.mark.parametrize("torch_cls, sample, channels_last", SAMPLES)
def test_training_steps_then_eval_match_torch(torch_cls, sample, channels_last):
    ours, theirs = _pair(torch_cls, sample.constructor_input)
    shape = sample.forward_input.args[0].shape
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    gen = torch.Generator().manual_seed(1)

    def batch():
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5
        return x.to(memory_format=fmt) if channels_last else x

    for _ in range(3):
        _step(ours, theirs, batch(), torch.randn(shape, generator=gen, dtype=torch.float64))
        _assert_same_state(ours, theirs)
    ours.eval()
    theirs.eval()
    _step(ours, theirs, batch(), torch.randn(shape, generator=gen, dtype=torch.float64))
    _assert_same_state(ours, theirs)


def test_zero_size_batches_in_training_behave_like_torch():
    for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
        ours, theirs = mnn.BatchNorm2d(3, momentum=None), torch.nn.BatchNorm2d(3, momentum=None)
        for mod in (ours, theirs):
            x = torch.randn(shape, requires_grad=True)
            y = mod(x)
            assert y.shape == shape
            y.sum().backward()
            assert torch.equal(mod.weight.grad, torch.zeros(3))
            assert torch.equal(mod.bias.grad, torch.zeros(3))
            assert x.grad.shape == shape
            assert mod.num_batches_tracked.item() == 1
            assert torch.equal(mod.running_mean, torch.zeros(3))
            assert torch.equal(mod.running_var, torch.ones(3))
        ours(torch.randn(4, 3, 2, 2) + 1)  # the empty batch counted, so momentum=None weighs 1/2
        theirs(torch.randn(4, 3, 2, 2) + 1)
        assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 2


# ---------------------------------------------------------------------------------------------
# A model with minibn's BN under torch.compile and torch.jit.trace


def _net(bn2d, bn1d, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False, dtype=torch.float64), bn2d(4, dtype=torch.float64),
        torch.nn.ReLU(), torch.nn.Conv2d(4, 5, 3, dtype=torch.float64),
        bn2d(5, dtype=torch.float64, momentum=0.3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(5 * 4 * 4, 6, dtype=torch.float64), bn1d(6, dtype=torch.float64))


def _nets():
    ours = _net(mnn.BatchNorm2d, mnn.BatchNorm1d)
    theirs = _net(torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _compare_runs(run_ours, ours, theirs, steps, gen):
    """``run_ours(x)`` (a compiled or traced ``ours``) against ``theirs`` eagerly: outputs,
    input and parameter gradients, then the whole state."""
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64) * 2 + 1
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = run_ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, **F64)
        g = torch.randn(ya.shape, generator=gen, dtype=torch.float64)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, **F64)
        for (name, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, **F64, msg=name)
            pa.grad = pb.grad = None
    _assert_same_state(ours, theirs)


def _compiled_run(ours, theirs, **compile_options):
    torch._dynamo.reset()
    try:
        compiled = torch.compile(ours, **compile_options)
        gen = torch.Generator().manual_seed(2)
        _compare_runs(compiled, ours, theirs, steps=2, gen=gen)
        ours.eval()
        theirs.eval()
        _compare_runs(compiled, ours, theirs, steps=1, gen=gen)
    finally:
        torch._dynamo.reset()


def _small_nets():
    def net(bn2d, bn1d):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, dtype=torch.float64),
                                   bn2d(4, dtype=torch.float64), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(144, 6, dtype=torch.float64),
                                   bn1d(6, dtype=torch.float64))
    return (net(mnn.BatchNorm2d, mnn.BatchNorm1d),
            net(torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))


@pytest.mark.slow
def test_torch_compile_captures_the_model_in_one_graph_and_gives_torchs_results():
    # fullgraph: dynamo must trace the model, BatchNormFunction's forward and backward included,
    # with no graph break. The aot_eager backend runs the captured graphs as they are (~20 s:
    # dynamo and AOTAutograd trace the training and the eval graphs).
    _compiled_run(*_small_nets(), backend="aot_eager", fullgraph=True)


@pytest.mark.slow
def test_torch_compile_with_inductor_gives_torchs_results():
    # The default backend compiles the graphs to C++ with gcc: minutes on 2 busy cores.
    _compiled_run(*_small_nets())


def test_torch_jit_trace_of_a_model_gives_torchs_results():
    gen = torch.Generator().manual_seed(3)
    ours, theirs = _nets()
    example = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    traced = torch.jit.trace(copy.deepcopy(ours), example)  # tracing runs a training step
    traced.load_state_dict(ours.state_dict())
    _compare_runs(traced, traced, theirs, steps=3, gen=gen)
    # The traced buffer updates stay out of the autograd graph, as torch's native ones do.
    assert all(b.grad_fn is None and not b.requires_grad for b in traced.buffers())
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    traced_eval = torch.jit.trace(ours, example)
    _compare_runs(traced_eval, ours, theirs, steps=1, gen=gen)


# ---------------------------------------------------------------------------------------------
# torch.func.vmap over a batch of inputs


@pytest.mark.parametrize("torch_cls, shape", [(torch.nn.BatchNorm1d, (5, 3)),
                                              (torch.nn.BatchNorm1d, (5, 3, 4)),
                                              (torch.nn.BatchNorm2d, (5, 3, 4, 4)),
                                              (torch.nn.BatchNorm3d, (5, 3, 2, 3, 2))])
def test_vmap_over_inputs_in_eval_mode(torch_cls, shape):
    ours, theirs = _pair(torch_cls, FunctionInput(3))
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):  # non-trivial running statistics
        x = torch.randn(shape, generator=gen, dtype=torch.float64) + 2
        ours(x)
        theirs(x)
    ours.eval()
    theirs.eval()
    xs = torch.randn((7,) + shape, generator=gen, dtype=torch.float64)
    got = torch.func.vmap(ours)(xs)
    torch.testing.assert_close(got, torch.func.vmap(theirs)(xs), **F64)
    torch.testing.assert_close(got, torch.stack([ours(x) for x in xs]), **F64)


def test_vmap_in_training_without_running_stats_normalizes_each_slice():
    ours = mnn.BatchNorm2d(3, track_running_stats=False, dtype=torch.float64)
    theirs = torch.nn.BatchNorm2d(3, track_running_stats=False, dtype=torch.float64)
    xs = torch.randn(6, 4, 3, 2, 2, dtype=torch.float64) * 3 + 1
    got = torch.func.vmap(ours)(xs)
    torch.testing.assert_close(got, torch.func.vmap(theirs)(xs), **F64)
    torch.testing.assert_close(got, torch.stack([ours(x) for x in xs]), **F64)


# ---------------------------------------------------------------------------------------------
# state_dict


def _torch1_checkpoint(state, version):
    """``state`` as torch before 0.4.1 saved it: no num_batches_tracked, BN version 1 (or no
    version metadata at all, as in checkpoints that predate it)."""
    old = OrderedDict((k, v.clone()) for k, v in state.items()
                      if not k.endswith("num_batches_tracked"))
    old._metadata = copy.deepcopy(state._metadata)
    for prefix, meta in old._metadata.items():
        if version is None:
            meta.pop("version", None)
        elif prefix and (prefix + ".num_batches_tracked") in state:
            meta["version"] = version
    return old


@pytest.mark.parametrize("version", [1, None])
def test_torch_1x_checkpoints_load_into_minibn_like_into_torch(version):
    _, theirs = _nets()
    theirs(torch.randn(4, 3, 8, 8, dtype=torch.float64))  # a training step moves the stats
    old = _torch1_checkpoint(theirs.state_dict(), version)
    fresh_ours, fresh_theirs = _nets()
    fresh_ours.load_state_dict(copy.deepcopy(old))  # strict: nothing reported missing
    fresh_theirs.load_state_dict(copy.deepcopy(old))
    _assert_same_state(fresh_ours, fresh_theirs)
    assert all(m.num_batches_tracked.item() == 0 for m in fresh_ours.modules()
               if isinstance(m, mnn.modules._BatchNorm))
    fresh_ours.eval()
    fresh_theirs.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fresh_ours(x), fresh_theirs(x), **F64)


def test_state_dicts_load_both_ways_strictly():
    ours, theirs = _nets()
    gen = torch.Generator().manual_seed(5)
    for _ in range(2):
        x = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
        ours(x)
    back = _net(torch.nn.BatchNorm2d, torch.nn.BatchNorm1d, seed=9)
    back.load_state_dict(ours.state_dict())
    _assert_same_state(ours, back)
    again = _net(mnn.BatchNorm2d, mnn.BatchNorm1d, seed=9)
    again.load_state_dict(back.state_dict())
    _assert_same_state(again, back)
    assert ours.state_dict()._metadata["1"]["version"] == theirs.state_dict()._metadata["1"][
        "version"] == 2

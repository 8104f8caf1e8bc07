"""minibn.nn.GroupNorm, LayerNorm and InstanceNorm2d against torch's, beyond the generic suite.

Every ``ModuleInfo`` sample of torch's three classes in float64: training steps then eval, with
outputs, every gradient and the state equal to torch's to rtol 1e-10 (the BatchNorm comparison
of ``test_against_torch``, reused); and the errors and ``state_dict`` behaviour torch's samples
do not cover. torch's generic module tests run on the three in ``test_torch_module_suite``.
"""
from __future__ import annotations

import re

import pytest
import torch
from torch.testing._internal.common_modules import module_db

from minibn import nn as mnn

from .test_against_torch import F64, _assert_same_state, _step

PAIRS = {torch.nn.GroupNorm: mnn.GroupNorm, torch.nn.LayerNorm: mnn.LayerNorm,
         torch.nn.InstanceNorm2d: mnn.InstanceNorm2d}


def _samples():
    for info in module_db:
        if info.module_cls in PAIRS:
            for sample in info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                                  requires_grad=False, training=True):
                name = f"{info.module_cls.__name__}-{sample.desc or 'default'}"
                yield pytest.param(info.module_cls, sample, id=name)


SAMPLES = list(_samples())
assert len(SAMPLES) == 10 + 7 + 6, "torch's ModuleInfo samples for these modules changed"


def _pair(torch_cls, constructor_input, seed=0):
    args, kwargs = constructor_input.args, constructor_input.kwargs
    theirs = torch_cls(*args, **kwargs, dtype=torch.float64)
    ours = PAIRS[torch_cls](*args, **kwargs, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():  # not the default ones and zeros: a wrong sum shows
            p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("torch_cls, sample", SAMPLES)
def test_training_steps_then_eval_match_torch(torch_cls, sample):
    ours, theirs = _pair(torch_cls, sample.constructor_input)
    assert repr(ours) == repr(theirs)
    shape = sample.forward_input.args[0].shape
    gen = torch.Generator().manual_seed(1)
    for training in (True, True, True, False):
        ours.train(training)
        theirs.train(training)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 5
        if len(shape) == 4 and training:  # both layouts: outputs and formats must agree
            x = x.to(memory_format=torch.channels_last)
        _step(ours, theirs, x, torch.randn(shape, generator=gen, dtype=torch.float64))
        _assert_same_state(ours, theirs)


def test_instance_norm_running_statistics_are_the_batch_average_and_used_in_eval():
    ours = mnn.InstanceNorm2d(3, momentum=0.5, track_running_stats=True, dtype=torch.float64)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    ours(x)
    mean = x.mean((2, 3)).mean(0)
    var = x.var((2, 3), unbiased=True).mean(0)
    torch.testing.assert_close(ours.running_mean, 0.5 * mean, **F64)
    torch.testing.assert_close(ours.running_var, 0.5 + 0.5 * var, **F64)
    ours.eval()
    expected = (x - ours.running_mean.view(1, 3, 1, 1)) / torch.sqrt(
        ours.running_var.view(1, 3, 1, 1) + 1e-5)
    torch.testing.assert_close(ours(x), expected, **F64)


def _raises_like_torch(make_ours, make_theirs, x):
    with pytest.raises(Exception) as theirs:
        make_theirs()(x)
    with pytest.raises(type(theirs.value), match=re.escape(str(theirs.value))):
        make_ours()(x)


@pytest.mark.parametrize("name, make, x", [
    ("groups do not divide C", lambda nn: nn.GroupNorm(2, 4, affine=False), torch.randn(2, 3, 4)),
    ("wrong C with affine", lambda nn: nn.GroupNorm(2, 4), torch.randn(2, 6, 4)),
    ("1-D input", lambda nn: nn.GroupNorm(1, 3), torch.randn(3)),
    ("one value per group", lambda nn: nn.GroupNorm(3, 3), torch.randn(1, 3)),
    ("wrong normalized shape", lambda nn: nn.LayerNorm(4), torch.randn(2, 6, 3)),
    ("instance norm of a 2-D input", lambda nn: nn.InstanceNorm2d(3), torch.randn(2, 3)),
    ("one spatial element", lambda nn: nn.InstanceNorm2d(3), torch.randn(2, 3, 1, 1)),
    ("wrong C with affine", lambda nn: nn.InstanceNorm2d(3, affine=True),
     torch.randn(2, 4, 3, 3)),
])
def test_errors_have_torchs_type_and_message(name, make, x):
    _raises_like_torch(lambda: make(mnn), lambda: make(torch.nn), x)


def test_constructor_errors_and_defaults_are_torchs():
    with pytest.raises(ValueError, match=r"num_channels \(10\) must be divisible by num_groups"):
        mnn.GroupNorm(3, 10)
    for ours, theirs in ((mnn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4)),
                         (mnn.LayerNorm([3, 4]), torch.nn.LayerNorm([3, 4])),
                         (mnn.LayerNorm(5, bias=False), torch.nn.LayerNorm(5, bias=False)),
                         (mnn.InstanceNorm2d(3), torch.nn.InstanceNorm2d(3)),
                         (mnn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                          torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True))):
        assert repr(ours) == repr(theirs)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert a.dtype == b.dtype and torch.equal(a, b), name


def test_instance_norm_refuses_pre_0_4_checkpoints_with_running_stats_like_torch():
    old = torch.nn.InstanceNorm2d(3, track_running_stats=True).state_dict()
    for meta in old._metadata.values():
        meta.pop("version", None)
    errors = []
    for cls in (mnn.InstanceNorm2d, torch.nn.InstanceNorm2d):
        with pytest.raises(RuntimeError) as err:
            cls(3).load_state_dict(old)
        errors.append(str(err.value).replace("minibn.", ""))
    assert "Unexpected running stats buffer(s)" in errors[0]
    assert errors[0] == errors[1]


def test_half_precision_inputs_are_normalized_in_float32_like_torch():
    x = torch.randn(4, 6, 3, 3) * 4 + 2
    for dtype in (torch.float16, torch.bfloat16):
        for ours, theirs in ((mnn.GroupNorm(3, 6, affine=False), torch.nn.GroupNorm(3, 6,
                                                                                  affine=False)),
                             (mnn.LayerNorm([6, 3, 3], elementwise_affine=False),
                              torch.nn.LayerNorm([6, 3, 3], elementwise_affine=False))):
            got = ours(x.to(dtype))
            assert got.dtype == dtype
            torch.testing.assert_close(got, theirs(x.to(dtype)), atol=2e-2, rtol=0)

"""minibn.nn against torch.nn: the modules are drop-in replacements, and the inference tools
(precise_bn, fold_batchnorm) compute what they claim."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibn import nn as mnn

torch.set_num_threads(1)

PAIRS = {1: (mnn.BatchNorm1d, torch.nn.BatchNorm1d),
         2: (mnn.BatchNorm2d, torch.nn.BatchNorm2d),
         3: (mnn.BatchNorm3d, torch.nn.BatchNorm3d)}
# float64 to ~1e-12 relative; float32 to ~1e-5.
TOL = {torch.float64: dict(rtol=1e-11, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def make_pair(kind, c, dtype=torch.float64, seed=0, **options):
    ours_cls, torch_cls = PAIRS[kind]
    ours = ours_cls(c, dtype=dtype, **options)
    theirs = torch_cls(c, dtype=dtype, **options)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 0.5)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def raised(call, *args):
    """The exception ``call(*args)`` raises (the test fails when it raises none)."""
    with pytest.raises(Exception) as info:
        call(*args)
    return info.value


def assert_raises_as_torch(ours, theirs, x, kind=ValueError):
    """Both modules refuse ``x`` with the same exception type and message."""
    mine, torchs = raised(ours, x), raised(theirs, x)
    assert type(mine) is type(torchs) is kind, (type(mine), type(torchs))
    assert str(mine) == str(torchs)


def assert_same_state(ours, theirs, dtype):
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith("num_batches_tracked"):
            assert a[key].item() == b[key].item(), key
            assert a[key].dtype == torch.long
        else:
            torch.testing.assert_close(a[key], b[key], **TOL[dtype], msg=key)


def step(ours, theirs, x, gen, dtype):
    """One forward + backward through both; compare outputs and every gradient."""
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, **TOL[dtype])
    assert ya.is_contiguous(memory_format=torch.channels_last) == \
        yb.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape, generator=gen, dtype=dtype)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL[dtype])
    # The parameter gradients are sums over the m values of each channel, of terms of either
    # sign: in float32 both implementations are off the float64 value by up to ~sqrt(m) ulps of
    # the terms (measured: 1.6e-5 relative for minibn, 1.8e-5 for torch, at m = 32).
    m = x.numel() // x.shape[1]
    tol = dict(TOL[dtype], atol=TOL[dtype]["atol"] * max(1.0, m ** 0.5))
    for (name, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, **tol, msg=name)
        pa.grad = pb.grad = None


configs = st.fixed_dictionaries({
    "kind": st.sampled_from([1, 2, 3]),
    "rank1": st.sampled_from([2, 3]),  # BatchNorm1d takes (N, C) or (N, C, L)
    "c": st.integers(1, 5),
    "n": st.integers(2, 5),
    "spatial": st.integers(1, 3),
    "eps": st.sampled_from([1e-5, 1e-3, 0.5]),
    "momentum": st.sampled_from([0.1, 0.3, 1.0, 0.0, None]),
    "affine": st.booleans(),
    "bias": st.booleans(),
    "track": st.booleans(),
    "dtype": st.sampled_from([torch.float64, torch.float32]),
    "channels_last": st.booleans(),
    "steps": st.integers(1, 3),
    "loc": st.sampled_from([0.0, 3.0, -20.0]),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=60, deadline=None)
@given(configs)
def test_parity_with_torch_over_random_configurations(cfg):
    dtype, gen = cfg["dtype"], torch.Generator().manual_seed(cfg["seed"])
    ndim = cfg["rank1"] if cfg["kind"] == 1 else cfg["kind"] + 2
    # float32 with 2 values per channel is ill-conditioned: when they nearly coincide
    # (var ~ eps) a 1-ulp difference in the mean moves the output by ~1e-4, and torch's kernel
    # and minibn round differently. 4 or more values make that practically impossible.
    n = cfg["n"] if dtype == torch.float64 else cfg["n"] + 2
    shape = (n, cfg["c"]) + (cfg["spatial"] + 1,) * (ndim - 2)
    ours, theirs = make_pair(cfg["kind"], cfg["c"], dtype, cfg["seed"], eps=cfg["eps"],
                             momentum=cfg["momentum"], affine=cfg["affine"], bias=cfg["bias"],
                             track_running_stats=cfg["track"])

    def batch():
        x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + cfg["loc"]
        if cfg["channels_last"] and ndim in (4, 5):
            x = x.to(memory_format=torch.channels_last if ndim == 4 else torch.channels_last_3d)
        return x

    for _ in range(cfg["steps"]):
        step(ours, theirs, batch(), gen, dtype)
        assert_same_state(ours, theirs, dtype)
    ours.eval()
    theirs.eval()
    step(ours, theirs, batch(), gen, dtype)  # eval after train: running stats (or batch stats)
    assert_same_state(ours, theirs, dtype)
    ours.train()
    theirs.train()
    step(ours, theirs, batch(), gen, dtype)
    # state_dict loads both ways, strictly, and the loaded module behaves like the source.
    back = PAIRS[cfg["kind"]][1](cfg["c"], dtype=dtype, eps=cfg["eps"], momentum=cfg["momentum"],
                                affine=cfg["affine"], bias=cfg["bias"],
                                track_running_stats=cfg["track"])
    back.load_state_dict(ours.state_dict())
    assert_same_state(ours, back, dtype)
    fresh = PAIRS[cfg["kind"]][0](cfg["c"], dtype=dtype, eps=cfg["eps"], momentum=cfg["momentum"],
                                  affine=cfg["affine"], bias=cfg["bias"],
                                  track_running_stats=cfg["track"])
    fresh.load_state_dict(theirs.state_dict())
    assert_same_state(fresh, theirs, dtype)
    step(fresh, theirs, batch(), gen, dtype)
    assert_same_state(fresh, theirs, dtype)


def test_momentum_none_is_the_cumulative_average():
    ours = mnn.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    batches = [torch.randn(8, 3, dtype=torch.float64) + i for i in range(5)]
    for x in batches:
        ours(x)
    torch.testing.assert_close(ours.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    torch.testing.assert_close(ours.running_var, torch.stack([x.var(0) for x in batches]).mean(0))
    assert ours.num_batches_tracked.item() == 5


def test_running_var_is_unbiased():
    ours = mnn.BatchNorm2d(2, momentum=1.0, dtype=torch.float64)
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    ours(x)
    expected = x.transpose(0, 1).reshape(2, -1).var(dim=1, correction=1)
    torch.testing.assert_close(ours.running_var, expected)


def test_track_running_stats_false_uses_batch_stats_in_eval():
    ours = mnn.BatchNorm1d(4, track_running_stats=False, dtype=torch.float64).eval()
    x = torch.randn(6, 4, dtype=torch.float64) * 5 + 2
    y = ours(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert ours.running_mean is None and "running_mean" not in ours.state_dict()


@pytest.mark.parametrize("kind, bad_shape", [(1, (4,)), (1, (2, 3, 4, 5)), (2, (2, 3, 4)),
                                             (2, (2, 3)), (3, (2, 3, 4, 4))])
def test_wrong_rank_raises_torchs_error(kind, bad_shape):
    ours, theirs = make_pair(kind, 3)
    x = torch.randn(bad_shape, dtype=torch.float64)
    assert_raises_as_torch(ours, theirs, x)


@pytest.mark.parametrize("kind, shape", [(1, (1, 3)), (1, (1, 3, 1)), (2, (1, 3, 1, 1)),
                                         (3, (1, 3, 1, 1, 1))])
def test_one_value_per_channel_in_training_raises_torchs_error(kind, shape):
    ours, theirs = make_pair(kind, 3)
    x = torch.randn(shape, dtype=torch.float64)
    assert_raises_as_torch(ours, theirs, x)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item()
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))  # eval mode needs no batch statistics


@pytest.mark.parametrize("make_input", [
    lambda: torch.ones(2, 3, 2, 2, dtype=torch.long),          # NotImplementedError
    lambda: torch.ones(2, 3, 2, 2, dtype=torch.float64),       # mixed dtype
    lambda: torch.ones(4, 3, 2, 2, dtype=torch.bool),
], ids=["long", "float64 into float32", "bool"])
@pytest.mark.parametrize("training", [True, False])
def test_bad_dtypes_raise_torchs_errors(make_input, training):
    ours, theirs = mnn.BatchNorm2d(3).train(training), torch.nn.BatchNorm2d(3).train(training)
    mine, torchs = raised(ours, make_input()), raised(theirs, make_input())
    assert type(mine) is type(torchs)
    assert str(mine) == str(torchs)


@pytest.mark.parametrize("eps, training", [(0.0, True), (-1.0, True), (-1.0, False)])
def test_bad_eps_raises_torchs_error_and_counts_the_batch_like_torch(eps, training):
    ours = mnn.BatchNorm2d(3, eps=eps).train(training)
    theirs = torch.nn.BatchNorm2d(3, eps=eps).train(training)
    x = torch.randn(2, 3, 2, 2)
    assert_raises_as_torch(ours, theirs, x)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item()


def test_wrong_channel_count_raises_torchs_error_and_says_where():
    with pytest.raises(RuntimeError) as ours_err:
        mnn.BatchNorm2d(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(RuntimeError) as torch_err:
        torch.nn.BatchNorm2d(3)(torch.randn(2, 4, 2, 2))
    assert str(ours_err.value).startswith(str(torch_err.value))  # "running_mean should contain..."
    assert "(2, 4, 2, 2)" in str(ours_err.value) and "axis 1" in str(ours_err.value)


def test_channels_last_preserved_in_output_and_grad():
    bn = mnn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5).to(memory_format=torch.channels_last).requires_grad_()
    y = bn(x)
    y.backward(torch.randn_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_repr_matches_torch():
    for kind in PAIRS:
        ours, theirs = make_pair(kind, 7, momentum=None, affine=False, track_running_stats=False)
        assert repr(ours) == repr(theirs)


def test_old_checkpoint_without_num_batches_tracked_loads():
    ours, theirs = make_pair(2, 3)
    state = theirs.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    ours.load_state_dict(copy.deepcopy(state))  # strict: no missing key reported
    theirs.load_state_dict(copy.deepcopy(state))
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 0
    del state._metadata[""]["version"]
    state._metadata[""]["version"] = 2
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        ours.load_state_dict(state)


def test_gradcheck_and_gradgradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: mnn.BatchNormFunction.apply(*a, 1e-5)[0], (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *a: mnn.BatchNormFunction.apply(*a, 1e-5)[0],
                                        (x, w, b))


def test_backward_is_the_closed_form_not_autograd_of_the_forward():
    x = torch.randn(4, 3, requires_grad=True)
    out = mnn.BatchNorm1d(3)(x)
    # The fused C++ loops on CPU where they apply (minibn.nn.fused), the composite ops otherwise:
    # the same closed form either way.
    assert type(out.grad_fn).__name__ in ("FusedBatchNormFunctionBackward",
                                          "BatchNormFunctionBackward")


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True)])
def test_needs_input_grad(need):
    ours, theirs = make_pair(2, 3)
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    grads = []
    for mod in (ours, theirs):
        xi = x.clone().requires_grad_(need[0])
        mod.weight.requires_grad_(need[1])
        mod.bias.requires_grad_(need[2])
        out = mod(xi)
        out.backward(torch.ones_like(out) + x)
        grads.append([t.grad for t in (xi, mod.weight, mod.bias)])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------
# precise_bn


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        mnn.BatchNorm1d(4, dtype=dtype), torch.nn.Linear(4, 5, dtype=dtype), torch.nn.ReLU(),
        torch.nn.BatchNorm1d(5, dtype=dtype), torch.nn.Linear(5, 2, dtype=dtype))


@settings(max_examples=10, deadline=None)
@given(st.integers(2, 6), st.integers(2, 9), st.integers(0, 1000))
def test_precise_bn_equals_full_data_statistics(num_batches, batch_size, seed):
    """On equal-size disjoint batches, the estimate is exactly the statistics of all the values
    each BN layer saw (for the first layer: the data set's mean and unbiased variance)."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(num_batches * batch_size, 4, generator=gen, dtype=torch.float64) * 3 + 7
    batches = list(data.split(batch_size))
    model = _model()
    seen = []
    hook = model[3].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    with torch.no_grad():
        model.train()
        for b in batches:
            model(b)
    hook.remove()
    layer2_inputs = torch.cat(seen)
    model = _model()
    assert mnn.precise_bn(model, batches) == num_batches
    torch.testing.assert_close(model[0].running_mean, data.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[0].running_var, data.var(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[3].running_mean, layer2_inputs.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[3].running_var, layer2_inputs.var(0), rtol=1e-12, atol=1e-12)


def test_precise_bn_pools_unequal_batches_per_value():
    data = torch.randn(23, 4, dtype=torch.float64) * 2 - 1
    model = _model()
    mnn.precise_bn(model, [(data[:3], None), (data[3:10], None), (data[10:], None)])
    torch.testing.assert_close(model[0].running_mean, data.mean(0))
    torch.testing.assert_close(model[0].running_var, data.var(0))


def test_precise_bn_is_not_the_mean_of_biased_batch_variances():
    """Averaging the biased batch variances underestimates by (m - 1) / m (paper Alg. 2)."""
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(40000, 4, generator=gen, dtype=torch.float64) * 2 + 3
    model = _model()
    mnn.precise_bn(model, data.split(4))
    naive = torch.stack([b.var(0, correction=0) for b in data.split(4)]).mean(0)
    assert torch.all(model[0].running_var > naive * 1.2)  # 4/3 in expectation
    torch.testing.assert_close(model[0].running_var, torch.full((4,), 4.0, dtype=torch.float64),
                               rtol=0.05, atol=0)


def test_precise_bn_restores_modes_and_counters():
    model = _model()
    model.eval()
    model[1].train()
    counts = [model[i].num_batches_tracked.item() for i in (0, 3)]
    mnn.precise_bn(model, torch.randn(30, 4, dtype=torch.float64).split(10), num_batches=2)
    assert [m.training for m in model] == [False, True, False, False, False]
    assert [model[i].num_batches_tracked.item() for i in (0, 3)] == counts


def test_precise_bn_uses_num_batches():
    data = torch.randn(40, 4, dtype=torch.float64)
    model = _model()
    assert mnn.precise_bn(model, iter(data.split(10)), num_batches=2) == 2
    torch.testing.assert_close(model[0].running_mean, data[:20].mean(0))


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model]


def _assert_unchanged(model, snapshot):
    state, modes = snapshot
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key in state:
        assert torch.equal(after[key], state[key]), key
    assert [m.training for m in model] == modes


class _FailsOn(torch.nn.Module):
    """Passes its input through, and raises on the ``n``-th call (counting from 1)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom")
        return x


def _trained_model():
    model = _model()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 4, dtype=torch.float64) * 2 + 1)
    return model.eval()


def test_precise_bn_failing_part_way_through_the_batches_leaves_the_model_as_it_was():
    model = _trained_model()
    before = _snapshot(model)

    def batches():
        yield torch.randn(8, 4, dtype=torch.float64)
        yield torch.randn(8, 4, dtype=torch.float64)
        raise OSError("the data loader died")

    with pytest.raises(OSError, match="data loader"):
        mnn.precise_bn(model, batches())
    _assert_unchanged(model, before)


def test_precise_bn_failing_inside_the_forward_leaves_the_model_as_it_was():
    # The first BN layer has already seen (and moved its statistics for) the failing batch.
    model = _trained_model()
    model.insert(2, _FailsOn(2))
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        mnn.precise_bn(model, torch.randn(30, 4, dtype=torch.float64).split(10))
    _assert_unchanged(model, before)


def test_precise_bn_layer_no_batch_reaches_gets_its_own_message_and_nothing_changes():
    class SkipsLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.unused = mnn.BatchNorm1d(4), mnn.BatchNorm1d(4)

        def forward(self, x):
            return self.first(x)

    model = SkipsLast()
    with torch.no_grad():
        model.first(torch.randn(8, 4) * 3 + 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"no batch reached BatchNorm1d\(4"):
        mnn.precise_bn(model, torch.randn(20, 4).split(5))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the layer before it is not overwritten


def test_precise_bn_skips_empty_batches():
    data = torch.randn(20, 4, dtype=torch.float64) * 2 + 1
    model = _model()
    mnn.precise_bn(model, [data[:10], data[:0], data[10:]])
    torch.testing.assert_close(model[0].running_mean, data.mean(0))
    torch.testing.assert_close(model[0].running_var, data.var(0))
    model = _model()
    with pytest.raises(ValueError, match="no batch reached"):
        mnn.precise_bn(model, [data[:0]])


def test_precise_bn_errors():
    with pytest.raises(ValueError, match="no BatchNorm"):
        mnn.precise_bn(torch.nn.Linear(2, 2), [torch.randn(3, 2)])
    model = _model()
    before = model[0].running_mean.clone()
    with pytest.raises(ValueError, match="empty"):
        mnn.precise_bn(model, [])
    with pytest.raises(ValueError, match="num_batches"):
        mnn.precise_bn(model, [torch.randn(3, 4, dtype=torch.float64)], num_batches=0)
    torch.testing.assert_close(model[0].running_mean, before)


# ----------------------------------------------------------------------------------------------
# fold_batchnorm


def _trained_bn(bn_cls, c, dtype, gen, shape_tail):
    bn = bn_cls(c, dtype=dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
        for _ in range(3):
            bn(torch.randn((6, c) + shape_tail, generator=gen, dtype=dtype) * 2 + 1)
    return bn.eval()


layers = st.fixed_dictionaries({
    "kind": st.sampled_from(["linear", "conv1d", "conv2d", "conv3d"]),
    "groups": st.sampled_from([1, 2]),
    "bias": st.booleans(),
    "dilation": st.integers(1, 2),
    "stride": st.integers(1, 2),
    "padding": st.integers(0, 1),
    "ours": st.booleans(),
    "dtype": st.sampled_from([torch.float64, torch.float32]),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=25, deadline=None)
@given(layers)
def test_fold_batchnorm_matches_layer_then_bn(cfg):
    dtype, gen = cfg["dtype"], torch.Generator().manual_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    cin, cout = 4, 6
    if cfg["kind"] == "linear":
        layer = torch.nn.Linear(cin, cout, bias=cfg["bias"], dtype=dtype)
        x, tail = torch.randn(5, cin, generator=gen, dtype=dtype), ()
        bn_cls = mnn.BatchNorm1d if cfg["ours"] else torch.nn.BatchNorm1d
    else:
        d = int(cfg["kind"][-2])
        conv = getattr(torch.nn, f"Conv{d}d")
        layer = conv(cin, cout, 3, stride=cfg["stride"], padding=cfg["padding"],
                     dilation=cfg["dilation"], groups=cfg["groups"], bias=cfg["bias"], dtype=dtype)
        x = torch.randn((2, cin) + (7,) * d, generator=gen, dtype=dtype)
        tail = (3,) * d
        bn_cls = PAIRS[d][0] if cfg["ours"] else PAIRS[d][1]
    bn = _trained_bn(bn_cls, cout, dtype, gen, tail)
    fused = mnn.fold_batchnorm(layer, bn)
    with torch.no_grad():
        expected = bn(layer(x))
        got = fused(x)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expected, **tol)
    assert type(fused) is type(layer) and fused is not layer
    assert (layer.bias is None) == (not cfg["bias"])  # the original is untouched


def test_fold_batchnorm_errors():
    layer = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="training mode"):
        mnn.fold_batchnorm(layer, mnn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="channel mismatch"):
        mnn.fold_batchnorm(layer, mnn.BatchNorm2d(5).eval())
    with pytest.raises(ValueError, match="track_running_stats"):
        mnn.fold_batchnorm(layer, mnn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(TypeError, match="Linear or nn.Conv"):
        mnn.fold_batchnorm(torch.nn.ConvTranspose2d(3, 4, 3), mnn.BatchNorm2d(4).eval())
    with pytest.raises(TypeError, match="BatchNorm"):
        mnn.fold_batchnorm(layer, torch.nn.LayerNorm(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("half_params", [False, True])
def test_low_precision_inputs_match_torch(dtype, half_params):
    ours, theirs = make_pair(2, 3, torch.float32)
    if half_params:
        ours, theirs = ours.to(dtype), theirs.to(dtype)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 5, 5, generator=gen) * 2 + 1).to(dtype)
    # Both compute in float32 and round to the low-precision dtype: allow a couple of its ulps.
    ulp = torch.finfo(dtype).eps
    tol = dict(rtol=4 * ulp, atol=4 * ulp)
    for mode in ("train", "eval"):
        getattr(ours, mode)()
        getattr(theirs, mode)()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        assert ya.dtype == yb.dtype == dtype
        torch.testing.assert_close(ya, yb, **tol)
        grad = torch.randn(x.shape, generator=gen).to(dtype)
        ya.backward(grad)
        yb.backward(grad)
        torch.testing.assert_close(xa.grad, xb.grad, **tol)
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tol)
        assert ours.running_mean.dtype == theirs.running_mean.dtype
        torch.testing.assert_close(ours.running_var, theirs.running_var, **tol)


def test_channel_count_is_free_without_per_channel_tensors_like_torch():
    x = torch.randn(3, 5, 2, 2, dtype=torch.float64)
    ours, theirs = make_pair(2, 2, affine=False, track_running_stats=False)
    torch.testing.assert_close(ours(x), theirs(x))

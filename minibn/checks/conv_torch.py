"""Checks for lesson 04-conv-torch: spatial BN as a torch autograd Function and module.

Learner code checked here, graded against ``torch.nn.BatchNorm2d`` / ``F.batch_norm``:
- ``BatchNormFunction``: a ``torch.autograd.Function`` with
  ``forward(ctx, x, weight, bias, eps) -> out`` (training mode, ``x`` of shape ``(N, C, H, W)``,
  statistics per channel over N, H and W) and ``backward(ctx, dout) -> (dx, dweight, dbias,
  None)`` in the closed form;
- ``BatchNorm2d``: an ``nn.Module`` with ``__init__(num_features, eps=1e-5, momentum=0.1)``,
  parameters ``weight``/``bias``, buffers ``running_mean``/``running_var``/
  ``num_batches_tracked``, training through ``BatchNormFunction`` and eval mode through the
  running statistics, interchangeable with ``torch.nn.BatchNorm2d`` via ``state_dict``.
"""
from __future__ import annotations

import numpy as np

from minibn.checks._core import Case, Exercise, Hint, assert_close, fmt, require_callable

__all__ = [
    "check_batchnorm_function",
    "check_batchnorm_function_randomized",
    "check_batchnorm_module",
    "check_batchnorm_module_randomized",
]


def _torch():
    import torch

    return torch


def _np(t, quantity, case):
    torch = _torch()
    if not isinstance(t, torch.Tensor):
        raise AssertionError(f"{quantity} must be a torch.Tensor, got {type(t).__name__} "
                             f"({case.description})")
    return t.detach().cpu().numpy()


def _tol(dtype):
    torch = _torch()
    return (2e-5, 1e-4) if dtype == torch.float32 else (1e-10, 1e-8)


# ----------------------------------------------------------------------------------------------
# BatchNormFunction


def _function_case(desc, shape, dtype_name="float64", eps=1e-5, channels_last=False, seed=0,
                   loc=1.0):
    torch = _torch()
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + loc
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w = torch.rand(c, generator=gen, dtype=dtype) + 0.5
    b = torch.randn(c, generator=gen, dtype=dtype)
    dout = torch.randn(shape, generator=gen, dtype=dtype)
    return Case(desc, {"x": x, "w": w, "b": b, "dout": dout}, {"eps": eps})


def _function_cases():
    return [
        _function_case("x of shape (4, 3, 5, 5), float64", (4, 3, 5, 5), seed=1),
        _function_case("x of shape (2, 4, 3, 3), float64, channels_last", (2, 4, 3, 3),
                       channels_last=True, seed=2),
        _function_case("x of shape (1, 2, 4, 4): one image, m = 16 values per channel",
                       (1, 2, 4, 4), seed=3),
        _function_case("x of shape (8, 3, 2, 2), float32", (8, 3, 2, 2), "float32", seed=4),
        _function_case("x of shape (3, 2, 3, 3), eps 0.5 (large)", (3, 2, 3, 3), eps=0.5, seed=5),
        _function_case("x of shape (2, 1, 3, 2), float64: one channel, mean -8", (2, 1, 3, 2),
                       seed=6, loc=-8.0),
    ]


def _reference(x, w, b, dout, eps, variant="ok"):
    """Output and gradients of torch's batch norm (or of a known bug), in float64."""
    torch = _torch()
    x = x.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    b = b.detach().double().requires_grad_()
    dims = {"ok": (0, 2, 3), "per_position": (0,), "per_sample": (1, 2, 3)}.get(variant, (0, 2, 3))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, correction=1 if variant == "unbiased" else 0)
    if variant == "frozen":
        mean, var = mean.detach(), var.detach()
    out = (x - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    out.backward(dout.double())
    return out.detach().numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()


def _check_function_case(fn, case):
    torch = _torch()
    x0, w0, b0, dout, eps = case["x"], case["w"], case["b"], case["dout"], case["eps"]
    x = x0.clone().requires_grad_()
    w = w0.clone().requires_grad_()
    b = b0.clone().requires_grad_()
    out = fn.apply(x, w, b, eps)
    if isinstance(out, tuple):
        raise AssertionError("BatchNormFunction.forward must return the output tensor only, "
                             f"got a tuple of {len(out)}")
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"BatchNormFunction.forward must return a tensor, got "
                             f"{type(out).__name__}")
    expected = _reference(x0, w0, b0, dout, eps)
    variants = {v: _reference(x0, w0, b0, dout, eps, v)
                for v in ("per_position", "per_sample", "unbiased", "frozen")}
    atol, rtol = _tol(x0.dtype)
    stat_hints = [
        Hint(variants["per_position"][0], "the statistics were taken over N only (one mean per "
             "channel AND position); spatial BN pools each channel over N, H and W: "
             "dims (0, 2, 3), an effective batch of m = N*H*W."),
        Hint(variants["per_sample"][0], "the statistics were taken per sample over C, H, W "
             "(that is LayerNorm); BN pools each channel over N, H and W: dims (0, 2, 3)."),
        Hint(variants["unbiased"][0], "normalize with the biased variance (correction=0 / "
             "unbiased=False); only the running variance is unbiased."),
    ]
    assert_close("out", _np(out, "out", case), expected[0], case, atol=atol, rtol=rtol,
                 hints=stat_hints)
    if out.dtype != x0.dtype:
        raise AssertionError(f"out has dtype {out.dtype}, expected {x0.dtype} ({case.description})")
    if x0.is_contiguous(memory_format=torch.channels_last) and x0.shape[2:] != (1, 1) and \
            not out.is_contiguous(memory_format=torch.channels_last):
        raise AssertionError(
            f"out lost the channels_last memory format of x ({case.description}): keep x's "
            "layout (elementwise ops and torch.empty_like do; .view/.contiguous() may not), as "
            "torch.nn.BatchNorm2d does, so the next channels_last conv needs no copy.")
    backward_name = f"{fn.__name__}Backward"
    if out.grad_fn is None or type(out.grad_fn).__name__ != backward_name:
        got = None if out.grad_fn is None else type(out.grad_fn).__name__
        raise AssertionError(
            f"out.grad_fn is {got}, expected {backward_name}: call the Function with "
            f"{fn.__name__}.apply(x, weight, bias, eps) so that your backward runs "
            f"({case.description}).")
    out.backward(dout)
    dx_hints = [
        Hint(variants["frozen"][1], "dx ignores the paths through the batch mean and variance; "
             "dx = weight * inv_std / m * (m*dout - sum(dout) - x_hat * sum(dout * x_hat))."),
        Hint(expected[1] / np.reshape(w0.detach().double().numpy(), (1, -1, 1, 1)),
             "dx is missing the factor weight (gamma)."),
    ]
    for name, t, want, hints in (("dx", x.grad, expected[1], dx_hints),
                                 ("dweight", w.grad, expected[2],
                                  [Hint(expected[3], "dweight and dbias are swapped.")]),
                                 ("dbias", b.grad, expected[3],
                                  [Hint(expected[2], "dweight and dbias are swapped.")])):
        if t is None:
            raise AssertionError(f"{name} is None: backward must return (dx, dweight, dbias, None) "
                                 f"({case.description})")
        assert_close(name, _np(t, name, case), want, case, atol=atol, rtol=rtol, hints=hints)


def _gradcheck(fn):
    torch = _torch()
    case = _function_case("float64 x of shape (3, 2, 2, 2), torch.autograd.gradcheck",
                          (3, 2, 2, 2), seed=9)
    inputs = tuple(case[k].clone().requires_grad_() for k in ("x", "w", "b"))
    ok = torch.autograd.gradcheck(lambda x, w, b: fn.apply(x, w, b, 1e-5), inputs,
                                  raise_exception=False)
    if not ok:
        raise AssertionError(f"torch.autograd.gradcheck failed ({case.description}): your "
                             "backward disagrees with finite differences of your forward.")


def _require_function(fn):
    torch = _torch()
    if not (isinstance(fn, type) and issubclass(fn, torch.autograd.Function)):
        raise AssertionError("BatchNormFunction must be a subclass of torch.autograd.Function, "
                             f"got {fn!r}")


def _function_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(4):
        shape = tuple(int(v) for v in (rng.integers(1, 5), rng.integers(1, 5),
                                       rng.integers(2, 5), rng.integers(2, 5)))
        dtype = "float32" if i == 3 else "float64"
        eps = float(rng.choice([1e-5, 1e-3, 0.1]))
        cl = bool(rng.integers(0, 2))
        desc = f"x of shape {shape}, {dtype}, eps {eps:g}{', channels_last' if cl else ''}"
        cases.append(_function_case(desc, shape, dtype, eps, cl, int(rng.integers(2**31)),
                                    float(rng.normal(0, 5))))
    return cases


def _gradcheck_extra(BatchNormFunction):
    """torch.autograd.gradcheck in float64"""
    _gradcheck(BatchNormFunction)


FUNCTION = Exercise("BatchNormFunction", _function_cases, _function_randomized,
                    _check_function_case, summary="a torch.autograd.Function for training-mode "
                    "spatial BN: output and gradients against torch", require=_require_function,
                    extra_checks=(_gradcheck_extra,))
check_batchnorm_function, check_batchnorm_function_randomized = FUNCTION.checks(
    "check_batchnorm_function", module=__name__)


# ----------------------------------------------------------------------------------------------
# BatchNorm2d module


def _construct(cls, c, momentum, case):
    try:
        return cls(c, momentum=momentum) if momentum != 0.1 else cls(c)
    except TypeError as err:
        raise AssertionError(f"BatchNorm2d({c}, momentum={momentum}) failed: {err}. The "
                             "constructor is __init__(self, num_features, eps=1e-5, "
                             f"momentum=0.1) ({case.description})") from None


def _check_structure(mod, ref, case):
    params = sorted(n for n, _ in mod.named_parameters())
    buffers = sorted(n for n, _ in mod.named_buffers())
    if params != ["bias", "weight"]:
        raise AssertionError(f"BatchNorm2d's parameters are {params}, expected ['bias', "
                             "'weight'] (nn.Parameter, so the optimizer trains them); the "
                             "running statistics are not trained: self.register_buffer them")
    if buffers != ["num_batches_tracked", "running_mean", "running_var"]:
        raise AssertionError(
            f"BatchNorm2d's buffers are {buffers}, expected ['num_batches_tracked', "
            "'running_mean', 'running_var']: register them with self.register_buffer so they are "
            "saved in state_dict and move with .to(device), but are not trained")
    got_keys, want_keys = list(mod.state_dict().keys()), list(ref.state_dict().keys())
    if got_keys != want_keys:
        order = ""
        if sorted(got_keys) == sorted(want_keys):
            order = ("\nHint: the same keys in another order. A state_dict lists tensors in the "
                     "order they were created: create weight and bias first, then register "
                     "running_mean, running_var and num_batches_tracked, in that order.")
        raise AssertionError(f"state_dict keys {got_keys} differ from torch.nn.BatchNorm2d's "
                             f"{want_keys} ({case.description}){order}")
    nbt = mod.num_batches_tracked
    if nbt.dtype != _torch().long or nbt.shape != ():
        raise AssertionError("num_batches_tracked must be a 0-dim torch.long tensor, got "
                             f"dtype {nbt.dtype} and shape {tuple(nbt.shape)}")
    for name in ("running_mean", "running_var", "weight", "bias"):
        got, want = getattr(mod, name), getattr(ref, name)
        assert_close(f"initial {name}", _np(got, name, case), want.detach().numpy(), case,
                     atol=0, rtol=0, hints=[])


def _check_step(mod, ref, x, dout, case, step):
    torch = _torch()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = mod(xa), ref(xb)
    atol, rtol = _tol(torch.float32)
    mode = "training" if ref.training else "eval"
    what = f"{case.description}, {mode} step {step}"
    sub = Case(what)
    hints = []
    if not ref.training and x.numel() // x.shape[1] > 1:
        with torch.no_grad():
            batch = torch.nn.functional.batch_norm(x, None, None, ref.weight, ref.bias, True)
        hints.append(Hint(batch.numpy(), "in eval mode, normalize with running_mean and "
                          "running_var, not with the batch's statistics."))
    assert_close("out", _np(ya, "out", sub), yb.detach().numpy(), sub, atol=atol, rtol=rtol,
                 hints=hints)
    if ref.training:
        name = type(ya.grad_fn).__name__ if ya.grad_fn is not None else "None"
        if "NativeBatchNorm" in name or "CudnnBatchNorm" in name:
            raise AssertionError("the module calls torch's own batch norm; use your "
                                 "BatchNormFunction.apply in training mode")
    ya.backward(dout)
    yb.backward(dout)
    for name, a, b in (("dx", xa.grad, xb.grad), ("dweight", mod.weight.grad, ref.weight.grad),
                       ("dbias", mod.bias.grad, ref.bias.grad)):
        if a is None:
            raise AssertionError(f"{name} is None after backward ({what})")
        assert_close(name, _np(a, name, sub), b.numpy(), sub, atol=atol, rtol=rtol)
    mod.weight.grad = mod.bias.grad = ref.weight.grad = ref.bias.grad = None


def _check_buffers(mod, ref, case, history):
    sub = Case(f"{case.description}, after {len(history)} training step(s)")
    if int(mod.num_batches_tracked) != int(ref.num_batches_tracked):
        raise AssertionError(f"num_batches_tracked is {int(mod.num_batches_tracked)}, expected "
                             f"{int(ref.num_batches_tracked)} ({sub.description}): add 1 per "
                             "training forward")
    momentum = ref.momentum
    rm_rev = np.zeros(ref.num_features)
    rv_rev, rv_biased = np.ones(ref.num_features), np.ones(ref.num_features)
    for x in history:
        x = x.double().numpy()
        mean, var_b, var_u = x.mean((0, 2, 3)), x.var((0, 2, 3)), x.var((0, 2, 3), ddof=1)
        rm_rev = momentum * rm_rev + (1 - momentum) * mean
        rv_rev = momentum * rv_rev + (1 - momentum) * var_u
        rv_biased = (1 - momentum) * rv_biased + momentum * var_b
    reversed_msg = ("momentum is reversed: running = (1 - momentum) * running + momentum * "
                    "batch_stat (torch's momentum weights the NEW batch).")
    atol, rtol = _tol(_torch().float32)
    assert_close("running_mean", _np(mod.running_mean, "running_mean", sub),
                 ref.running_mean.numpy(), sub, atol=atol, rtol=rtol,
                 hints=[Hint(rm_rev, reversed_msg)])
    assert_close("running_var", _np(mod.running_var, "running_var", sub),
                 ref.running_var.numpy(), sub, atol=atol, rtol=rtol, hints=[
                     Hint(rv_biased, "running_var must be updated with the unbiased batch "
                          "variance, times m / (m - 1) for m = N*H*W values per channel."),
                     Hint(rv_rev, reversed_msg)])


def _check_module_case(cls, case):
    torch = _torch()
    c, n, h, momentum = case["c"], case["n"], case["h"], case["momentum"]
    gen = torch.Generator().manual_seed(case["seed"])
    mod = _construct(cls, c, momentum, case)
    ref = torch.nn.BatchNorm2d(c, momentum=momentum)
    _check_structure(mod, ref, case)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        ref.bias.copy_(torch.randn(c, generator=gen))
    try:
        mod.load_state_dict(ref.state_dict())
    except RuntimeError as err:
        raise AssertionError(f"torch.nn.BatchNorm2d's state_dict does not load into yours: {err}")

    def batch(shape=None):
        x = torch.randn(shape or (n, c, h, h), generator=gen) * 2 + case["loc"]
        return x.contiguous(memory_format=torch.channels_last) if case["channels_last"] else x

    history = []
    for step in range(1, 4):
        x = batch()
        history.append(x)
        _check_step(mod, ref, x, torch.randn(x.shape, generator=gen), case, step)
        _check_buffers(mod, ref, case, history)
    mod.eval()
    ref.eval()
    for step, shape in enumerate([(n, c, h, h), (1, c, 1, 1)], 1):
        x = batch(shape)
        _check_step(mod, ref, x, torch.randn(x.shape, generator=gen), case, step)
    if any(int(a != b) for a, b in [(mod.num_batches_tracked, ref.num_batches_tracked)]):
        raise AssertionError("num_batches_tracked changed in eval mode; only training updates "
                             "the running statistics")
    _check_buffers(mod, ref, case, history)
    back = torch.nn.BatchNorm2d(c, momentum=momentum)
    try:
        back.load_state_dict(mod.state_dict())
    except RuntimeError as err:
        raise AssertionError(f"your state_dict does not load into torch.nn.BatchNorm2d: {err}")


def _check_errors(cls):
    torch = _torch()
    mod = cls(3)
    for shape, what in (((4, 3, 5), "a 3D input"), ((4, 3), "a 2D input")):
        try:
            mod(torch.randn(shape))
        except ValueError:
            pass
        except Exception as err:  # noqa: BLE001 - any other failure is the learner's to fix
            raise AssertionError(f"BatchNorm2d on {what} of shape {shape} raised "
                                 f"{type(err).__name__}: {err}; raise ValueError('expected 4D "
                                 f"input (got {len(shape)}D input)') as torch does") from None
        else:
            raise AssertionError(f"BatchNorm2d accepted {what} of shape {shape}; raise ValueError"
                                 f"('expected 4D input (got {len(shape)}D input)') as torch does")
    try:
        mod(torch.randn(1, 3, 1, 1))
    except ValueError:
        pass
    else:
        raise AssertionError("BatchNorm2d in training mode accepted x of shape (1, 3, 1, 1): one "
                             "value per channel has no variance; raise ValueError('Expected more "
                             "than 1 value per channel when training, ...') as torch does")


def _module_case(desc, c, n, h, momentum=0.1, channels_last=False, seed=0, loc=1.0):
    return Case(desc, params={"c": c, "n": n, "h": h, "momentum": momentum, "seed": seed,
                              "channels_last": channels_last, "loc": loc})


def _module_public():
    return [
        _module_case("BatchNorm2d(3), batches of shape (4, 3, 5, 5)", 3, 4, 5, seed=1),
        _module_case("BatchNorm2d(4, momentum=0.3), batches (2, 4, 3, 3), channels_last",
                     4, 2, 3, momentum=0.3, channels_last=True, seed=2),
        _module_case("BatchNorm2d(2), batches (1, 2, 3, 3): N = 1, m = 9", 2, 1, 3, seed=3),
    ]


def _module_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        c, n, h = (int(v) for v in (rng.integers(1, 6), rng.integers(2, 6), rng.integers(1, 5)))
        momentum = float(rng.choice([0.05, 0.1, 0.5, 0.9]))
        cl = bool(rng.integers(0, 2))
        desc = (f"BatchNorm2d({c}, momentum={fmt(momentum)}), batches ({n}, {c}, {h}, {h})"
                f"{', channels_last' if cl else ''}")
        cases.append(_module_case(desc, c, n, h, momentum, cl, int(rng.integers(2**31)),
                                  float(rng.normal(0, 3))))
    return cases


def _errors_extra(BatchNorm2d):
    """the input errors torch raises"""
    _check_errors(BatchNorm2d)


MODULE = Exercise("BatchNorm2d", _module_public, _module_randomized, _check_module_case,
                  summary="a module against torch.nn.BatchNorm2d: structure and state_dict (keys "
                  "in torch's order), outputs, gradients and buffers over 3 training steps, eval "
                  "mode (also on one 1x1 image), loading both ways",
                  require=lambda cls: require_callable(cls, "BatchNorm2d"),
                  extra_checks=(_errors_extra,))
check_batchnorm_module, check_batchnorm_module_randomized = MODULE.checks(
    "check_batchnorm_module", module=__name__)

EXERCISES = (FUNCTION, MODULE)

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

from minibn.checks._core import (Case, Exercise, Hint, Split, answer, assert_close, conditioned_atols, fmt,
                                 require_callable)
from minibn.conventions import update_running_stat

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


def _function_compute(fn, case):
    """The learner's Function on one case: its output and gradients, as plain data."""
    torch = _torch()
    x = case["x"].clone().requires_grad_()
    w = case["w"].clone().requires_grad_()
    b = case["b"].clone().requires_grad_()
    out = fn.apply(x, w, b, case["eps"])
    if isinstance(out, tuple):
        raise AssertionError("BatchNormFunction.forward must return the output tensor only, "
                             f"got a tuple of {len(out)}")
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"BatchNormFunction.forward must return a tensor, got "
                             f"{type(out).__name__}")
    answers = {"out": _np(out, "out", case), "dtype": str(out.dtype), "name": fn.__name__,
               "channels_last": out.is_contiguous(memory_format=torch.channels_last),
               "grad_fn": None if out.grad_fn is None else type(out.grad_fn).__name__}
    if answers["grad_fn"] != f"{fn.__name__}Backward":
        return answers  # judge stops there: the learner's backward never ran
    try:
        out.backward(case["dout"])
    except Exception as err:  # noqa: BLE001 - the learner's backward; judge raises it in turn
        answers["raised"] = err
        return answers
    for name, t in (("dx", x.grad), ("dweight", w.grad), ("dbias", b.grad)):
        answers[name] = None if t is None else _np(t, name, case)
    return answers


def _function_judge(answers, case):
    torch = _torch()
    x0, w0, b0, dout, eps = case["x"], case["w"], case["b"], case["dout"], case["eps"]
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
    assert_close("out", answer(answers, "out"), expected[0], case, atol=atol, rtol=rtol,
                 hints=stat_hints)
    if answers.get("dtype") != str(x0.dtype):
        raise AssertionError(f"out has dtype {answers.get('dtype')}, expected {x0.dtype} "
                             f"({case.description})")
    if x0.is_contiguous(memory_format=torch.channels_last) and x0.shape[2:] != (1, 1) and \
            answers.get("channels_last") is not True:
        raise AssertionError(
            f"out lost the channels_last memory format of x ({case.description}): keep x's "
            "layout (elementwise ops and torch.empty_like do; .view/.contiguous() may not), as "
            "torch.nn.BatchNorm2d does, so the next channels_last conv needs no copy.")
    name = str(answers.get("name"))
    backward_name = f"{name}Backward"
    if answers.get("grad_fn") != backward_name:
        raise AssertionError(
            f"out.grad_fn is {answers.get('grad_fn')}, expected {backward_name}: call the Function "
            f"with {name}.apply(x, weight, bias, eps) so that your backward runs "
            f"({case.description}).")
    dx_hints = [
        Hint(variants["frozen"][1], "dx ignores the paths through the batch mean and variance; "
             "dx = weight * inv_std / m * (m*dout - sum(dout) - x_hat * sum(dout * x_hat))."),
        Hint(expected[1] / np.reshape(w0.detach().double().numpy(), (1, -1, 1, 1)),
             "dx is missing the factor weight (gamma)."),
    ]
    for name, want, hints in (("dx", expected[1], dx_hints),
                              ("dweight", expected[2], [Hint(expected[3], "dweight and dbias are swapped.")]),
                              ("dbias", expected[3], [Hint(expected[2], "dweight and dbias are swapped.")])):
        got = answer(answers, name)
        if got is None:
            raise AssertionError(f"{name} is None: backward must return (dx, dweight, dbias, None) "
                                 f"({case.description})")
        assert_close(name, got, want, case, atol=atol, rtol=rtol, hints=hints)


_GRADCHECK = "float64 x of shape (3, 2, 2, 2), torch.autograd.gradcheck"


def _gradcheck_compute(fn):
    """torch.autograd.gradcheck in float64"""
    torch = _torch()
    case = _function_case(_GRADCHECK, (3, 2, 2, 2), seed=9)
    inputs = tuple(case[k].clone().requires_grad_() for k in ("x", "w", "b"))
    # gradcheck only compares the learner's backward with finite differences of the learner's
    # forward, so the answer is what it reports.
    return {"ok": bool(torch.autograd.gradcheck(lambda x, w, b: fn.apply(x, w, b, 1e-5), inputs,
                                                raise_exception=False))}


def _gradcheck_judge(answers):
    if answers.get("ok") is not True:
        raise AssertionError(f"torch.autograd.gradcheck failed ({_GRADCHECK}): your "
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


FUNCTION = Exercise("BatchNormFunction", _function_cases, _function_randomized, None,
                    summary="a torch.autograd.Function for training-mode spatial BN: output and "
                    "gradients against torch", require=_require_function,
                    extra_checks=(Split(_gradcheck_compute, _gradcheck_judge,
                                        "torch.autograd.gradcheck in float64"),),
                    compute=_function_compute, judge=_function_judge)
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


def _as_np(t):
    return t.detach().cpu().clone().numpy() if isinstance(t, _torch().Tensor) else None  # a copy: buffers change in place


def _structure(mod):
    """What ``_check_structure`` looks at, as plain data."""
    nbt = getattr(mod, "num_batches_tracked", None)
    return {"params": sorted(n for n, _ in mod.named_parameters()),
            "buffers": sorted(n for n, _ in mod.named_buffers()),
            "keys": list(mod.state_dict().keys()),
            "nbt_dtype": str(getattr(nbt, "dtype", None)), "nbt_shape": list(getattr(nbt, "shape", [-1])),
            "initial": {name: _as_np(getattr(mod, name, None))
                        for name in ("running_mean", "running_var", "weight", "bias")}}


def _check_structure(structure, ref, case):
    params, buffers = structure["params"], structure["buffers"]
    if params != ["bias", "weight"]:
        raise AssertionError(f"BatchNorm2d's parameters are {params}, expected ['bias', "
                             "'weight'] (nn.Parameter, so the optimizer trains them); the "
                             "running statistics are not trained: self.register_buffer them")
    if buffers != ["num_batches_tracked", "running_mean", "running_var"]:
        raise AssertionError(
            f"BatchNorm2d's buffers are {buffers}, expected ['num_batches_tracked', "
            "'running_mean', 'running_var']: register them with self.register_buffer so they are "
            "saved in state_dict and move with .to(device), but are not trained")
    got_keys, want_keys = structure["keys"], list(ref.state_dict().keys())
    if got_keys != want_keys:
        order = ""
        if sorted(got_keys) == sorted(want_keys):
            order = ("\nHint: the same keys in another order. A state_dict lists tensors in the "
                     "order they were created: create weight and bias first, then register "
                     "running_mean, running_var and num_batches_tracked, in that order.")
        raise AssertionError(f"state_dict keys {got_keys} differ from torch.nn.BatchNorm2d's "
                             f"{want_keys} ({case.description}){order}")
    if structure["nbt_dtype"] != str(_torch().long) or structure["nbt_shape"] != []:
        raise AssertionError("num_batches_tracked must be a 0-dim torch.long tensor, got "
                             f"dtype {structure['nbt_dtype']} and shape {tuple(structure['nbt_shape'])}")
    for name in ("running_mean", "running_var", "weight", "bias"):
        got = structure["initial"][name]
        if got is None:
            raise AssertionError(f"{name} must be a torch.Tensor ({case.description})")
        assert_close(f"initial {name}", got, getattr(ref, name).detach().numpy(), case,
                     atol=0, rtol=0, hints=[])


def _module_inputs(case):
    """The generator every step's inputs come from, and ``batch(shape)``: both halves draw the
    same tensors in the same order from the case's seed."""
    torch = _torch()
    c, n, h = case["c"], case["n"], case["h"]
    gen = torch.Generator().manual_seed(case["seed"])

    def batch(shape=None):
        x = torch.randn(shape or (n, c, h, h), generator=gen) * 2 + case["loc"]
        return x.contiguous(memory_format=torch.channels_last) if case["channels_last"] else x

    return gen, batch


def _module_steps(case):
    """``(training, step, shape)`` of every step: three training steps, two in eval mode."""
    c, n, h = case["c"], case["n"], case["h"]
    return [(True, 1, None), (True, 2, None), (True, 3, None), (False, 1, (n, c, h, h)), (False, 2, (1, c, 1, 1))]


def _module_compute(cls, case):
    """The learner's module over the steps of one case: its structure, then per step its output,
    gradients and buffers, and its final state_dict, as plain data."""
    torch = _torch()
    c, momentum = case["c"], case["momentum"]
    gen, batch = _module_inputs(case)
    mod = _construct(cls, c, momentum, case)
    answers = {"structure": _structure(mod), "steps": []}
    ref = torch.nn.BatchNorm2d(c, momentum=momentum)  # only the weights the learner's module loads
    with torch.no_grad():
        ref.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        ref.bias.copy_(torch.randn(c, generator=gen))
    try:
        mod.load_state_dict(ref.state_dict())
    except RuntimeError as err:
        answers["load_error"] = str(err)
        return answers
    for training, step, shape in _module_steps(case):
        if not training and step == 1:
            mod.eval()
        x = batch(shape)
        dout = torch.randn(x.shape, generator=gen)
        record = {}
        answers["steps"].append(record)
        xa = x.clone().requires_grad_()
        try:
            y = mod(xa)
            record["out"] = _as_np(y)
            record["grad_fn"] = type(y.grad_fn).__name__ if getattr(y, "grad_fn", None) is not None else "None"
            y.backward(dout)
        except Exception as err:  # noqa: BLE001 - the learner's module; judge raises it at that step
            answers["raised"] = err
            return answers
        record.update(dx=_as_np(xa.grad), dweight=_as_np(mod.weight.grad), dbias=_as_np(mod.bias.grad))
        mod.weight.grad = mod.bias.grad = None
        record.update(nbt=int(mod.num_batches_tracked), running_mean=_as_np(mod.running_mean),
                      running_var=_as_np(mod.running_var))
    answers["state_dict"] = {k: _as_np(v) for k, v in mod.state_dict().items()}
    return answers


def _judge_step(record, answers, ref, x, dout, case, step):
    torch = _torch()

    def got(key):
        return record[key] if key in record else answer(answers, key)

    xb = x.clone().requires_grad_()
    yb = ref(xb)
    atol, rtol = _tol(torch.float32)
    out_atol, dx_atol, dweight_atol = (
        conditioned_atols(x.double().numpy(), ref.weight.detach().double().numpy(),
                          dout.double().numpy(), ref.eps, atol, np.float32)
        if ref.training else (atol,) * 3)
    mode = "training" if ref.training else "eval"
    what = f"{case.description}, {mode} step {step}"
    sub = Case(what)
    hints = []
    if not ref.training and x.numel() // x.shape[1] > 1:
        with torch.no_grad():
            batch = torch.nn.functional.batch_norm(x, None, None, ref.weight, ref.bias, True)
        hints.append(Hint(batch.numpy(), "in eval mode, normalize with running_mean and "
                          "running_var, not with the batch's statistics."))
    out = got("out")
    if out is None:
        raise AssertionError(f"out must be a torch.Tensor ({what})")
    assert_close("out", out, yb.detach().numpy(), sub, atol=out_atol, rtol=rtol, hints=hints)
    if ref.training:
        name = str(got("grad_fn"))
        if "NativeBatchNorm" in name or "CudnnBatchNorm" in name:
            raise AssertionError("the module calls torch's own batch norm; use your "
                                 "BatchNormFunction.apply in training mode")
    yb.backward(dout)
    for name, b, tol in (("dx", xb.grad, dx_atol), ("dweight", ref.weight.grad, dweight_atol),
                         ("dbias", ref.bias.grad, atol)):
        a = got(name)
        if a is None:
            raise AssertionError(f"{name} is None after backward ({what})")
        assert_close(name, a, b.numpy(), sub, atol=tol, rtol=rtol)
    ref.weight.grad = ref.bias.grad = None


def _check_buffers(record, ref, case, history):
    sub = Case(f"{case.description}, after {len(history)} training step(s)")
    if record["nbt"] != int(ref.num_batches_tracked):
        raise AssertionError(f"num_batches_tracked is {record['nbt']}, expected "
                             f"{int(ref.num_batches_tracked)} ({sub.description}): add 1 per "
                             "training forward")
    momentum = ref.momentum
    rm_rev = np.zeros(ref.num_features)
    rv_rev, rv_biased = np.ones(ref.num_features), np.ones(ref.num_features)
    for x in history:
        x = x.double().numpy()
        mean, var_b, var_u = x.mean((0, 2, 3)), x.var((0, 2, 3)), x.var((0, 2, 3), ddof=1)
        update_running_stat(rm_rev, mean, 1 - momentum)  # the reversed convention: the same rule
        update_running_stat(rv_rev, var_u, 1 - momentum)
        update_running_stat(rv_biased, var_b, momentum)
    reversed_msg = ("momentum is reversed: running = (1 - momentum) * running + momentum * "
                    "batch_stat (torch's momentum weights the NEW batch).")
    atol, rtol = _tol(_torch().float32)
    assert_close("running_mean", record["running_mean"], ref.running_mean.numpy(), sub, atol=atol,
                 rtol=rtol, hints=[Hint(rm_rev, reversed_msg)])
    assert_close("running_var", record["running_var"], ref.running_var.numpy(), sub, atol=atol,
                 rtol=rtol, hints=[
                     Hint(rv_biased, "running_var must be updated with the unbiased batch "
                          "variance, times m / (m - 1) for m = N*H*W values per channel."),
                     Hint(rv_rev, reversed_msg)])


def _module_judge(answers, case):
    torch = _torch()
    c, momentum = case["c"], case["momentum"]
    gen, batch = _module_inputs(case)
    ref = torch.nn.BatchNorm2d(c, momentum=momentum)
    _check_structure(answer(answers, "structure"), ref, case)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        ref.bias.copy_(torch.randn(c, generator=gen))
    if answers.get("load_error") is not None:
        raise AssertionError("torch.nn.BatchNorm2d's state_dict does not load into yours: "
                             f"{answers['load_error']}")
    records = list(answer(answers, "steps"))
    history, record = [], {}
    for i, (training, step, shape) in enumerate(_module_steps(case)):
        if not training and step == 1:
            ref.eval()
        x = batch(shape)
        dout = torch.randn(x.shape, generator=gen)
        if training:
            history.append(x)
        record = records[i] if i < len(records) and type(records[i]) is dict else {}
        _judge_step(record, answers, ref, x, dout, case, step)
        if training:
            _check_buffers(record, ref, case, history)
    if record["nbt"] != int(ref.num_batches_tracked):
        raise AssertionError("num_batches_tracked changed in eval mode; only training updates "
                             "the running statistics")
    _check_buffers(record, ref, case, history)
    back = torch.nn.BatchNorm2d(c, momentum=momentum)
    state = answer(answers, "state_dict")
    if type(state) is not dict or not all(type(v) is np.ndarray for v in state.values()):
        raise AssertionError(f"BatchNorm2d's state_dict must hold tensors only ({case.description})")
    try:
        back.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    except RuntimeError as err:
        raise AssertionError(f"your state_dict does not load into torch.nn.BatchNorm2d: {err}")


def _errors_compute(cls):
    """What the learner's module does with inputs torch refuses, as plain data."""
    torch = _torch()
    mod = cls(3)
    answers = {}
    for shape in ((4, 3, 5), (4, 3), (1, 3, 1, 1)):
        try:
            mod(torch.randn(shape))
        except ValueError:
            answers[str(len(shape))] = "ValueError"
        except Exception as err:  # noqa: BLE001 - any other failure is the learner's to fix
            answers[str(len(shape))] = [type(err).__name__, str(err)[:500]]
        else:
            answers[str(len(shape))] = "accepted"
    return answers


def _errors_judge(answers):
    for shape, what in (((4, 3, 5), "a 3D input"), ((4, 3), "a 2D input")):
        got = answers.get(str(len(shape)))
        if got == "ValueError":
            continue
        if got == "accepted":
            raise AssertionError(f"BatchNorm2d accepted {what} of shape {shape}; raise ValueError"
                                 f"('expected 4D input (got {len(shape)}D input)') as torch does")
        kind, message = (got + ["", ""])[:2] if type(got) is list else ("an error", "")
        raise AssertionError(f"BatchNorm2d on {what} of shape {shape} raised "
                             f"{kind}: {message}; raise ValueError('expected 4D "
                             f"input (got {len(shape)}D input)') as torch does")
    got = answers.get("4")
    if got != "ValueError":
        raised = f" (it raised {got[0]}: {got[1]})" if type(got) is list and len(got) == 2 else ""
        raise AssertionError("BatchNorm2d in training mode accepted x of shape (1, 3, 1, 1): one "
                             "value per channel has no variance; raise ValueError('Expected more "
                             f"than 1 value per channel when training, ...') as torch does{raised}")


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


MODULE = Exercise("BatchNorm2d", _module_public, _module_randomized, None,
                  summary="a module against torch.nn.BatchNorm2d: structure and state_dict (keys "
                  "in torch's order), outputs, gradients and buffers over 3 training steps, eval "
                  "mode (also on one 1x1 image), loading both ways",
                  require=lambda cls: require_callable(cls, "BatchNorm2d"),
                  extra_checks=(Split(_errors_compute, _errors_judge, "the input errors torch raises"),),
                  compute=_module_compute, judge=_module_judge)
check_batchnorm_module, check_batchnorm_module_randomized = MODULE.checks(
    "check_batchnorm_module", module=__name__)

EXERCISES = (FUNCTION, MODULE)

"""Checks for lesson 07-convnet: a conv-BN-ReLU block, evaluating in eval mode, folding BN.

Learner functions checked here:
- ``conv_bn_relu(c_in, c_out) -> nn.Sequential``: a 3x3 convolution (padding 1, no bias), a
  ``BatchNorm2d(c_out)`` and a ReLU, in that order (paper Sec. 3.2: BN before the nonlinearity).
- ``evaluate_accuracy(model, x, y, batch_size=256) -> float``: the fraction of ``x`` classified
  as ``y``, computed in eval mode without gradients, leaving the model's mode and buffers as
  they were.
- ``fold_conv_bn(conv, bn) -> nn.Conv2d``: a new convolution computing ``bn(conv(x))`` for an
  eval-mode ``bn``, leaving ``conv`` and ``bn`` unchanged.
"""
from __future__ import annotations

import copy

import numpy as np

from minibn.checks._core import Case, Exercise, Hint, answer, assert_close

__all__ = [
    "check_conv_bn_relu",
    "check_conv_bn_relu_randomized",
    "check_evaluate_accuracy",
    "check_evaluate_accuracy_randomized",
    "check_fold_conv_bn",
    "check_fold_conv_bn_randomized",
]


def _torch():
    import torch

    return torch


def _is_bn2d(m):
    return "BatchNorm2d" in type(m).__name__


# ---- conv_bn_relu ---------------------------------------------------------------------------

def _block_compute(fn, case):
    """The learner's block as plain data: its layers and their settings, and one output."""
    torch = _torch()
    from torch import nn

    block = fn(case["c_in"], case["c_out"])
    if not isinstance(block, nn.Module):
        return {"module": type(block).__name__}
    mods = [m for m in block.modules() if m is not block and not isinstance(m, nn.Sequential)]
    answers = {"kinds": ["conv" if isinstance(m, nn.Conv2d) else "bn" if _is_bn2d(m)
                         else "relu" if isinstance(m, nn.ReLU) else type(m).__name__ for m in mods],
               "bn1d": any("BatchNorm1d" in type(m).__name__ for m in mods)}
    if answers["kinds"] != ["conv", "bn", "relu"] or answers["bn1d"]:
        return answers
    conv, bn = mods[0], mods[1]
    answers.update(conv_bias=conv.bias is not None, channels=[conv.in_channels, conv.out_channels],
                   kernel=list(conv.kernel_size), padding=list(conv.padding), stride=list(conv.stride),
                   num_features=bn.num_features)
    try:
        answers["out"] = block(torch.randn(4, case["c_in"], 6, 5)).detach().numpy()
    except Exception as err:  # noqa: BLE001 - judge raises it once the settings it checks first pass
        answers["raised"] = err
    return answers


def _block_judge(answers, case):
    c_in, c_out, where = case["c_in"], case["c_out"], case.description
    if "module" in answers:
        raise AssertionError(f"conv_bn_relu must return an nn.Module (e.g. nn.Sequential), got "
                             f"{answers['module']} ({where})")
    kinds = answer(answers, "kinds")
    if answers.get("bn1d") is not False:
        raise AssertionError(f"conv_bn_relu uses BatchNorm1d ({where}).\nHint: a conv layer's "
                             "output (N, C, H, W) needs BatchNorm2d: one mean and variance per "
                             "channel over N, H and W.")
    if kinds != ["conv", "bn", "relu"]:
        hint = ""
        if kinds == ["conv", "relu", "bn"]:
            hint = ("\nHint: BN goes before the nonlinearity (paper Sec. 3.2): it normalizes "
                    "Wu, which is 'more Gaussian' than the ReLU's output.")
        raise AssertionError(f"conv_bn_relu has layers {kinds}, expected ['conv', 'bn', 'relu'] "
                             f"({where}).{hint}")
    if answer(answers, "conv_bias") is not False:
        raise AssertionError(f"the convolution has a bias ({where}).\nHint: BN subtracts each "
                             "channel's mean, which cancels any bias, and beta takes its place: "
                             "use bias=False (a wasted parameter and a wasted add otherwise).")
    channels = answer(answers, "channels")
    if channels != [c_in, c_out]:
        raise AssertionError(f"the convolution maps {channels[0]} -> {channels[1]} "
                             f"channels, expected {c_in} -> {c_out} ({where})")
    kernel, padding, stride = (answer(answers, k) for k in ("kernel", "padding", "stride"))
    if kernel != [3, 3] or padding != [1, 1] or stride != [1, 1]:
        raise AssertionError(f"the convolution has kernel {tuple(kernel)}, padding "
                             f"{tuple(padding)}, stride {tuple(stride)}; expected a 3x3 "
                             f"kernel, padding 1, stride 1 so H and W are kept ({where})")
    if answer(answers, "num_features") != c_out:
        raise AssertionError(f"BatchNorm2d has num_features={answers['num_features']}, expected {c_out}: "
                             f"one per output channel of the convolution ({where})")
    out = answer(answers, "out")
    if type(out) is not np.ndarray or out.shape != (4, c_out, 6, 5):
        got = tuple(out.shape) if type(out) is np.ndarray else type(out).__name__
        raise AssertionError(f"the block maps (4, {c_in}, 6, 5) to {got}, expected "
                             f"(4, {c_out}, 6, 5) ({where})")
    if not bool((out >= 0).all()):
        raise AssertionError(f"the block's output has negative values ({where}): the ReLU must "
                             "come last")


def _block_case(c_in, c_out):
    return Case(f"conv_bn_relu({c_in}, {c_out})", params={"c_in": c_in, "c_out": c_out})


def _block_randomized(seed):
    rng = np.random.default_rng(seed)
    return [_block_case(int(rng.integers(1, 12)), int(rng.integers(1, 12))) for _ in range(3)]


BLOCK = Exercise("conv_bn_relu", lambda: [_block_case(1, 8), _block_case(8, 16)],
                 _block_randomized, None,
                 summary="the block's layers, their order and settings, and its output shape",
                 compute=_block_compute, judge=_block_judge)
check_conv_bn_relu, check_conv_bn_relu_randomized = BLOCK.checks(module=__name__)


# ---- evaluate_accuracy ----------------------------------------------------------------------

def _eval_case(seed, n, classes, where):
    """A BN classifier whose running statistics differ sharply from any batch's statistics."""
    torch = _torch()
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 5 * 5, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        bn = model[1]
        bn.running_mean.copy_(torch.randn(4, generator=g) * 2)
        bn.running_var.copy_(torch.rand(4, generator=g) * 3 + 0.2)
        bn.num_batches_tracked.fill_(10)
    x = torch.randn(n, 1, 5, 5, generator=g) * 2 + 1
    with torch.no_grad():
        model.eval()
        logits = model(x)
    # labels: the eval-mode prediction for most examples, so eval and train mode disagree
    y = logits.argmax(1)
    flip = torch.rand(n, generator=g) < 0.3
    y[flip] = torch.randint(0, classes, (int(flip.sum()),), generator=g)
    model.train()
    # the mode it starts in, kept apart: in one process compute hands judge the same model
    return Case(where, {}, {"model": model, "x": x, "y": y, "training": True})


def _reference_accuracy(model, x, y):
    torch = _torch()
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        return float((m(x).argmax(1) == y).float().mean())


def _eval_compute(fn, case):
    """What the learner's function answers on the case's model, and what it did to the model."""
    torch = _torch()
    model, x, y = case["model"], case["x"], case["y"]
    state = copy.deepcopy(model.state_dict())
    got = fn(model, x, y, case["batch_size"])
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    return {"type": type(got).__name__,
            "accuracy": float(got) if isinstance(got, (float, np.floating)) else None,
            "changed": [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])],
            "training": model.training}


def _eval_judge(answers, case):
    torch = _torch()
    model, x, y, batch_size = case["model"], case["x"], case["y"], case["batch_size"]
    want = _reference_accuracy(model, x, y)
    with torch.no_grad():
        probe = copy.deepcopy(model).train()
        train_mode_acc = float(torch.cat([probe(b).argmax(1) for b in x.split(batch_size)]).eq(y)
                               .float().mean())
    got = answers.get("accuracy")
    if type(got) is not float:
        raise AssertionError(f"evaluate_accuracy must return a float, got {answers.get('type')} "
                             f"({case.description})")
    changed = answers.get("changed")
    if changed != []:
        changed = [str(k) for k in changed] if type(changed) is list else ["state"]
        raise AssertionError(
            f"evaluate_accuracy changed the model's {', '.join(changed)} ({case.description}).\n"
            "Hint: in training mode every forward pass updates BN's running statistics; call "
            "model.eval() before evaluating, so BN uses (and keeps) its running statistics.")
    was_training = case["training"]
    if answers.get("training") is not was_training:
        now = bool(answers.get("training"))
        raise AssertionError(
            f"evaluate_accuracy left the model in {'training' if now else 'eval'} "
            f"mode; it was in {'training' if was_training else 'eval'} mode before "
            f"({case.description}).\nHint: remember model.training and restore it "
            "(model.train(was_training)), or the next training step runs BN in eval mode.")
    hints = [Hint(np.array([train_mode_acc]), "this is the accuracy with batch statistics "
                  "(training mode); evaluate in eval mode (model.eval()).")]
    assert_close("accuracy", np.array([got]), np.array([want]), case, atol=1e-6, rtol=0,
                 hints=hints)


def _eval_case_with_batch(seed, n, k, bs, where):
    case = _eval_case(seed, n, k, where)
    return Case(case.description, case.arrays, {**case.params, "batch_size": bs})


def _eval_public():
    return [_eval_case_with_batch(seed, n, k, bs, f"BN classifier, {n} examples, {k} classes, "
                                  f"batch_size {bs}")
            for seed, n, k, bs in ((0, 64, 3, 16), (1, 50, 4, 7))]


def _eval_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        n, k, bs = int(rng.integers(20, 90)), int(rng.integers(2, 6)), int(rng.integers(3, 40))
        cases.append(_eval_case_with_batch(int(rng.integers(0, 2**31)), n, k, bs,
                                           f"{n} examples, {k} classes, batch_size {bs}"))
    return cases


EVALUATE = Exercise("evaluate_accuracy", _eval_public, _eval_randomized, None,
                    summary="the accuracy, the eval mode, the untouched buffers and the restored "
                    "mode", compute=_eval_compute, judge=_eval_judge)
check_evaluate_accuracy, check_evaluate_accuracy_randomized = EVALUATE.checks(module=__name__)


# ---- fold_conv_bn ---------------------------------------------------------------------------

def _fold_case(seed, c_in, c_out, bias, where):
    torch = _torch()
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias).double()
    bn = nn.BatchNorm2d(c_out, eps=1e-3).double()
    with torch.no_grad():
        for p in list(conv.parameters()) + list(bn.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(c_out, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c_out, generator=g, dtype=torch.float64) * 2 + 1e-3)
    bn.eval()
    x = torch.randn(3, c_in, 5, 4, generator=g, dtype=torch.float64)
    return Case(where, {}, {"conv": conv, "bn": bn, "x": x})


def _fold_variant(conv, bn, *, eps=True, beta=True, conv_bias=True, axis=0):
    """What ``bn(conv(x))`` folds to with one known bug switched on (float64)."""
    torch = _torch()
    w = conv.weight.detach().clone()
    var = bn.running_var + (bn.eps if eps else 0.0)
    scale = bn.weight.detach() / var.sqrt()
    shift = -bn.running_mean * scale + (bn.bias.detach() if beta else 0.0)
    b = conv.bias.detach() if (conv.bias is not None and conv_bias) else torch.zeros_like(scale)
    w = w * (scale.view(-1, 1, 1, 1) if axis == 0 else scale.view(1, -1, 1, 1))
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        fused.weight.copy_(w)
        fused.bias = torch.nn.Parameter(b * scale + shift)
    return fused


def _fold_state(conv, bn):
    return {k: v for k, v in list(conv.state_dict().items()) + [
        ("bn." + k, v) for k, v in bn.state_dict().items()]}


def _fold_compute(fn, case):
    """The folded convolution's output on the case's input, and what the function changed."""
    torch = _torch()
    from torch import nn

    conv, bn, x = case["conv"], case["bn"], case["x"]
    before = {k: v.clone() for k, v in _fold_state(conv, bn).items()}
    fused = fn(conv, bn)
    after = _fold_state(conv, bn)
    answers = {"changed": [k for k in before if not torch.equal(before[k], after[k])],
               "type": type(fused).__name__, "conv2d": isinstance(fused, nn.Conv2d)}
    if answers["conv2d"]:
        with torch.no_grad():
            answers["out"] = fused(x).double().numpy()
    return answers


def _fold_judge(answers, case):
    torch = _torch()

    conv, bn, x = case["conv"], case["bn"], case["x"]
    changed = answers.get("changed")
    if changed != []:
        changed = [str(k) for k in changed] if type(changed) is list else ["state"]
        raise AssertionError(f"fold_conv_bn modified its inputs ({', '.join(changed)}) "
                             f"({case.description}): copy the conv (copy.deepcopy) and write the "
                             "folded weights into the copy")
    if answers.get("conv2d") is not True:
        raise AssertionError(f"fold_conv_bn must return an nn.Conv2d, got {answers.get('type')} "
                             f"({case.description})")
    with torch.no_grad():
        want = bn(conv(x)).numpy()
        hints = []
        for kw, message in (
            ({"eps": False}, "eps is missing: scale = gamma / sqrt(running_var + eps)."),
            ({"beta": False}, "beta is missing from the folded bias: b' = scale * (b - "
                              "running_mean) + beta."),
            ({"conv_bias": False}, "the convolution's own bias was dropped: b' = scale * "
                                   "(b - running_mean) + beta."),
            ({"axis": 1}, "the scale multiplies the weight's input-channel axis; BN scales "
                          "output channels: weight * scale.view(-1, 1, 1, 1)."),
        ):
            if kw.get("conv_bias") is False and conv.bias is None:
                continue
            if kw.get("axis") == 1 and conv.in_channels != conv.out_channels:
                continue
            hints.append(Hint(_fold_variant(conv, bn, **kw)(x).numpy(), message))
    assert_close("folded conv output", answer(answers, "out"), want, case, atol=1e-9, rtol=1e-9,
                 hints=hints)


def _fold_public():
    return [_fold_case(seed, c_in, c_out, bias, f"conv {c_in}->{c_out} 3x3 "
                       f"{'with' if bias else 'without'} bias, BN eps 1e-3, float64")
            for seed, c_in, c_out, bias in ((0, 3, 3, True), (1, 2, 5, False), (2, 4, 4, False))]


def _fold_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        c_in, c_out = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        bias = bool(rng.integers(0, 2))
        cases.append(_fold_case(int(rng.integers(0, 2**31)), c_in, c_out, bias,
                                f"conv {c_in}->{c_out}, {'with' if bias else 'without'} bias"))
    return cases


FOLD = Exercise("fold_conv_bn", _fold_public, _fold_randomized, None,
                summary="fold_conv_bn(conv, bn)(x) == bn(conv(x)) in float64, eval-mode BN, "
                "inputs untouched", compute=_fold_compute, judge=_fold_judge)
check_fold_conv_bn, check_fold_conv_bn_randomized = FOLD.checks(module=__name__)

EXERCISES = (BLOCK, EVALUATE, FOLD)

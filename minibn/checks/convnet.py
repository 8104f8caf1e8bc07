"""Checks for lesson 07-convnet: a conv-BN-ReLU block, evaluation in eval mode, folding a network.

Learner functions checked here:
- ``conv_bn_relu(c_in, c_out) -> nn.Sequential``: a 3x3 convolution (padding 1, no bias), a
  ``BatchNorm2d(c_out)`` and a ReLU, in that order (paper Sec. 3.2: BN before the nonlinearity).
- ``evaluate_accuracy(model, x, y, batch_size=256) -> float``: the fraction of ``x`` classified
  as ``y``, computed in eval mode without gradients, leaving the model's mode and buffers as
  they were.
- ``fold_model(model) -> nn.Module``: a new model in eval mode computing ``model.eval()(x)``, in
  which every ``BatchNorm2d`` (minibn's or torch's) that comes right after a ``Conv2d`` in the same
  ``nn.Sequential`` is folded into that convolution (which gains a bias) and replaced by
  ``nn.Identity`` (or removed); every other layer, other ``BatchNorm2d`` layers included, stays
  with its settings. The model it is given keeps its layers, values and mode.
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
    "check_fold_model",
    "check_fold_model_randomized",
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


# ---- fold_model -----------------------------------------------------------------------------
#
# A case is an architecture (a nested list of layer specs, lists being nn.Sequential), a seed for
# its weights and running statistics, the mode the model is in, and an input. The model is built
# from the spec on each side (sandbox and grader), and the judge rebuilds its own copy, so a
# learner's function that changes the model it is given cannot change the reference.

def _conv(c_in, c_out, k=3, stride=1, padding=1, dilation=1, groups=1, bias=False):
    return ("conv", c_in, c_out, k, stride, padding, dilation, groups, bias)


def _bn(c, impl="minibn", affine=True, eps=1e-5):
    return ("bn", c, impl, affine, eps)


_HEAD = (("gap",), ("flatten",))


def _build(spec, seed):
    torch = _torch()
    from torch import nn

    from minibn.nn import BatchNorm2d

    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def layer(s):
        kind = s[0]
        if kind == "conv":
            _, c_in, c_out, k, stride, padding, dilation, groups, bias = s
            m = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation,
                          groups=groups, bias=bias).double()
            with torch.no_grad():  # unit-scale outputs, so no layer's values dwarf another's
                m.weight.copy_(randn(*m.weight.shape) / m.weight[0].numel() ** 0.5)
                if bias:
                    m.bias.copy_(randn(c_out))
            return m
        if kind == "bn":
            _, c, impl, affine, eps = s
            m = (BatchNorm2d if impl == "minibn" else nn.BatchNorm2d)(c, eps=eps, affine=affine).double()
            with torch.no_grad():
                if affine:
                    m.weight.copy_(randn(c))
                    m.bias.copy_(randn(c))
                m.running_mean.copy_(randn(c))
                m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 3 + 0.05)
                m.num_batches_tracked.fill_(100)
            return m
        if kind == "linear":
            m = nn.Linear(s[1], s[2]).double()
            with torch.no_grad():
                m.weight.copy_(randn(s[2], s[1]) / s[1] ** 0.5)
                m.bias.copy_(randn(s[2]))
            return m
        return {"relu": nn.ReLU, "pool": lambda: nn.MaxPool2d(3, stride=1, padding=1),
                "gap": lambda: nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten}[kind]()

    def sequential(items):
        return nn.Sequential(*[sequential(i) if isinstance(i, list) else layer(i) for i in items])

    return sequential(spec)


def _spec_text(spec):
    def one(s):
        if isinstance(s, list):
            return "[" + " → ".join(one(t) for t in s) + "]"
        kind = s[0]
        if kind == "conv":
            _, c_in, c_out, k, stride, padding, dilation, groups, bias = s
            extra = "".join(f" {name} {v}" for name, v in (("stride", stride), ("dilation", dilation),
                                                            ("groups", groups)) if v > 1)
            return f"conv {c_in}→{c_out} {k}x{k}{extra}{' bias' if bias else ' no bias'}"
        if kind == "bn":
            _, c, impl, affine, eps = s
            return (f"{'nn.' if impl == 'torch' else ''}BatchNorm2d({c}"
                    f"{', affine=False' if not affine else ''}, eps={eps:g})")
        if kind == "linear":
            return f"Linear({s[1]}, {s[2]})"
        return {"relu": "ReLU", "pool": "MaxPool2d(3, 1, 1)", "gap": "AdaptiveAvgPool2d(1)",
                "flatten": "Flatten"}[kind]
    return "Sequential(" + " → ".join(one(s) for s in spec) + ")"


def _spec_kinds(spec, training):
    """The kinds of architecture a case shows (``properties`` reads them from ``params["kinds"]``),
    so the public cases are held to show every kind the hidden ones use."""
    kinds = {f"model in {'training' if training else 'eval'} mode"}

    def walk(items, nested):
        prev = None
        for s in items:
            if isinstance(s, list):
                walk(s, True)
                prev = ("block",)
                continue
            if s[0] == "bn":
                kinds.add("nn.BatchNorm2d" if s[2] == "torch" else "minibn BatchNorm2d")
                if not s[3]:
                    kinds.add("BatchNorm2d(affine=False)")
                if prev is None:
                    kinds.add("BN first in its Sequential (stays)")
                elif prev[0] == "conv":
                    kinds.add(f"conv {'with' if prev[8] else 'without'} bias → BN")
                    kinds.add(f"conv → BN {'in a nested' if nested else 'in the top'} Sequential")
                    if prev[7] > 1:
                        kinds.add("grouped conv → BN")
                    if prev[4] > 1 or prev[6] > 1:
                        kinds.add("strided or dilated conv → BN")
                else:
                    kinds.add(f"BN after {prev[0]} (stays)")
            elif s[0] == "linear":
                kinds.add("linear head")
            prev = s

    walk(spec, False)
    return sorted("architecture: " + k for k in kinds)


def _fold_model_case(spec, seed, training, n, h, w):
    torch = _torch()

    model = _build(spec, seed).train(training)
    c_in = spec[0][0][1] if isinstance(spec[0], list) else spec[0][1]
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64) * 1.5 + 0.5
    where = (f"{_spec_text(spec)} in {'training' if training else 'eval'} mode, x of shape "
             f"({n}, {c_in}, {h}, {w}), float64")
    return Case(where, {"x": x}, {"spec": spec, "seed": seed, "training": training, "model": model,
                                  "kinds": _spec_kinds(spec, training)})


def _case_model(case):
    return _build(case["spec"], case["seed"]).train(case["training"])


def _roles(model):
    """Each leaf layer of ``model`` in forward order, as data, with what a fold does to it: a
    BatchNorm2d right after a Conv2d in the same nn.Sequential is folded into it (``fold``, the
    conv's name), any other BatchNorm2d stays (``reason``), a conv with a BN after it gains a bias."""
    from torch import nn

    names = {id(m): name for name, m in model.named_modules()}
    role = {}
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.children())
        for i, m in enumerate(children):
            if not _is_bn2d(m):
                continue
            prev = children[i - 1] if i else None
            if isinstance(prev, nn.Conv2d):
                role[id(m)] = {"fold": names[id(prev)], "torch": isinstance(m, nn.BatchNorm2d)}
                role[id(prev)] = {"folded": True}
            elif prev is None:
                role[id(m)] = {"reason": "it is the first layer of its nn.Sequential, so no "
                                         "convolution feeds it directly"}
            else:
                why = {nn.ReLU: "BN(relu(z)) is not an affine map of z, so no convolution can "
                                "absorb it",
                       nn.MaxPool2d: "a per-channel scale (negative when gamma is) does not "
                                     "commute with a max"}.get(type(prev), "")
                role[id(m)] = {"reason": f"it follows {type(prev).__name__} "
                                         f"'{names[id(prev)]}', not a Conv2d{'; ' + why if why else ''}"}
    return [{**_layer(name, m), **role.get(id(m), {})} for name, m in model.named_modules()
            if _is_leaf(m)]


def _is_leaf(m):
    from torch import nn

    return next(m.children(), None) is None and not isinstance(m, nn.Identity)


def _layer(name, m):
    """One layer's kind and the settings a fold must keep, as plain data."""
    from torch import nn

    d = {"name": name, "kind": "BatchNorm2d" if _is_bn2d(m) else type(m).__name__}
    if isinstance(m, nn.Conv2d):
        d.update(channels=[m.in_channels, m.out_channels], kernel=list(m.kernel_size),
                 stride=list(m.stride), padding=list(m.padding) if not isinstance(m.padding, str)
                 else m.padding, dilation=list(m.dilation), groups=m.groups,
                 bias=m.bias is not None)
    elif _is_bn2d(m):
        d.update(num_features=int(m.num_features), eps=float(m.eps),
                 affine=getattr(m, "weight", None) is not None)
    return d


def _model_state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, type(m).__name__) for n, m in model.named_modules()],
            [bool(m.training) for m in model.modules()])


def _fold_model_compute(fn, case):
    """What the learner's fold returned (its layers, which BN layers are in training mode, its
    output on the case's input) and what it did to the model it was given."""
    torch = _torch()
    from torch import nn

    model, x = case["model"], case["x"]
    state, layout, modes = _model_state(model)
    try:
        folded = fn(model)
    except Exception as err:  # noqa: BLE001 - judge names it, with a hint when it is a known one
        return {"raised": err}
    state_after, layout_after, modes_after = _model_state(model)
    changed = [k for k in state if k in state_after and not torch.equal(state[k], state_after[k])]
    changed += [f"{k} (added)" for k in state_after if k not in state]
    if layout != layout_after:  # which keys went with a replaced layer says less than this
        changed.append("its layers (a layer was replaced or removed)")
    else:
        changed += [f"{k} (removed)" for k in state if k not in state_after]
        if modes != modes_after:
            changed.append("its mode (model.training)")
    answers = {"changed": changed, "module": isinstance(folded, nn.Module),
               "type": type(folded).__name__, "same": folded is model}
    if not answers["module"]:
        return answers
    answers["layers"] = [_layer(name, m) for name, m in folded.named_modules() if _is_leaf(m)]
    answers["training"] = [name for name, m in folded.named_modules() if _is_bn2d(m) and m.training]
    try:
        with torch.no_grad():
            out = folded(x)
        answers["out_type"] = type(out).__name__
        if isinstance(out, torch.Tensor):
            answers["out_dtype"] = str(out.dtype).replace("torch.", "")
            answers["out"] = out.detach().to(torch.float64).numpy()
    except Exception as err:  # noqa: BLE001 - raised by judge once the layers it checks first pass
        answers["raised"] = err
    return answers


def _learner_step(answers, key, case, what):
    """``answer(answers, key)``, an exception of the learner's code turned into a failure that
    names the case (and, for the known ones, says what to change)."""
    try:
        return answer(answers, key)
    except AssertionError:
        raise
    except Exception as err:  # noqa: BLE001 - any exception of the learner's code fails the case
        text = str(err)
        hint = ""
        if "NoneType" in text and "affine=False" in case.description:
            hint = ("\nHint: a BatchNorm2d(affine=False) has weight and bias None: it scales by 1 "
                    "and shifts by 0 (gamma = 1, beta = 0).")
        elif isinstance(err, RuntimeError) and ("size of tensor" in text or "broadcast" in text):
            hint = ("\nHint: BN's scale has one value per output channel, so it multiplies axis 0 "
                    "of the weight, of shape (C_out, C_in / groups, kh, kw): weight * "
                    "scale.view(-1, 1, 1, 1); and start from a copy of the conv "
                    "(copy.deepcopy(conv)) so its groups, stride, padding and dilation carry over.")
        elif isinstance(err, RuntimeError) and ("Double" in text or "double" in text):
            hint = ("\nHint: keep each layer's dtype, float64 here: copy.deepcopy(conv) keeps it, "
                    "a new nn.Conv2d(...) is float32.")
        raise AssertionError(f"{what} raised {type(err).__name__}: {text} "
                             f"({case.description}).{hint}") from err


def _fold_model_judge(answers, case):
    torch = _torch()

    where = case.description
    changed = _learner_step(answers, "changed", case, "fold_model")
    if changed != []:
        changed = [str(k) for k in changed] if type(changed) is list else ["its state"]
        raise AssertionError(
            f"fold_model changed the model it was given ({', '.join(changed[:4])}) ({where}).\n"
            "Hint: fold a copy (folded = copy.deepcopy(model).eval()) and replace layers in the "
            "copy only: the caller may keep training the original, in the mode it was in.")
    if answers.get("module") is not True:
        raise AssertionError(f"fold_model must return an nn.Module, got {answers.get('type')} "
                             f"({where})")
    if answers.get("same") is not False:
        raise AssertionError(f"fold_model returned the model it was given ({where}): return a new "
                             "model (copy.deepcopy(model)) with the BatchNorm layers folded")
    model = _case_model(case)
    _judge_layers(answers.get("layers"), _roles(model), case)
    training = answers.get("training")
    if training != []:
        names = ", ".join(f"'{n}'" for n in training[:3]) if type(training) is list else "some"
        raise AssertionError(
            f"the folded model's BatchNorm2d {names} is in training mode ({where}).\nHint: return "
            "the folded model in eval mode (copy.deepcopy(model).eval()): in training mode a "
            "BatchNorm2d that stays normalizes with each batch's statistics, not its running ones.")
    out = _learner_step(answers, "out", case, "the folded model")
    if type(out) is not np.ndarray:
        raise AssertionError(f"the folded model must return a tensor, got {answers.get('out_type')} "
                             f"({where})")
    if answers.get("out_dtype") != "float64":
        raise AssertionError(
            f"the folded model returns {answers.get('out_dtype')} for a float64 model ({where}): "
            "keep each layer's dtype (a new bias from torch.zeros_like(bn.running_mean), not "
            "torch.zeros(c), which is float32)")
    x = case["x"]
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x).numpy()
    assert_close("folded model output", out, want, case, atol=1e-9, rtol=1e-9,
                 hints=lambda: _fold_hints(model, x))


def _judge_layers(got, ref, case):
    """The folded model's layers (Identity left out) against the original's: every layer kept
    but the folded BatchNorm2d layers, in order, each with its settings."""
    where = case.description
    if type(got) is not list or not all(type(g) is dict for g in got):
        raise AssertionError(f"the folded model's layers cannot be read ({where})")
    kept = [r for r in ref if "fold" not in r]
    pairs, j = [], 0
    for r in ref:
        nxt = got[j].get("kind") if j < len(got) else None
        if "fold" in r:
            if nxt == "BatchNorm2d":
                which = ("\nHint: it is torch's nn.BatchNorm2d; test for both kinds, "
                         "isinstance(m, (BatchNorm2d, nn.BatchNorm2d))." if r["torch"] else "")
                raise AssertionError(
                    f"BatchNorm2d '{r['name']}' is still in the folded model ({where}): it comes "
                    f"right after Conv2d '{r['fold']}' in the same nn.Sequential, so fold it into "
                    f"that convolution and replace it by nn.Identity().{which}")
            continue
        if nxt != r["kind"]:
            if r["kind"] == "BatchNorm2d":
                raise AssertionError(
                    f"BatchNorm2d '{r['name']}' is missing from the folded model ({where}), but "
                    f"it must stay, in eval mode: {r['reason']}.\nHint: fold only a BatchNorm2d "
                    "that comes right after a Conv2d in the same nn.Sequential.")
            raise AssertionError(
                f"the folded model's layers are {[g.get('kind') for g in got]}, expected "
                f"{[k['kind'] for k in kept]} ({where}): {nxt or 'nothing'} where "
                f"{r['kind']} '{r['name']}' should be; keep every layer but the folded BatchNorm2d")
        pairs.append((r, got[j]))
        j += 1
    if j < len(got):
        raise AssertionError(f"the folded model has extra layers {[g.get('kind') for g in got[j:]]} "
                             f"after the original's last ({where})")
    for r, g in pairs:
        if r["kind"] == "Conv2d":
            for key in ("channels", "kernel", "stride", "padding", "dilation", "groups"):
                if g.get(key) != r[key]:
                    raise AssertionError(
                        f"Conv2d '{r['name']}' has {key} {g.get(key)} in the folded model, "
                        f"expected {r[key]} ({where}).\nHint: start from a copy of the "
                        "convolution (copy.deepcopy(conv)) so its stride, padding, dilation and "
                        "groups carry over; a new nn.Conv2d(...) easily loses one.")
            if r.get("folded") and g.get("bias") is not True:
                raise AssertionError(
                    f"the folded Conv2d '{r['name']}' has no bias ({where}): folding gives it "
                    "one, b' = scale * (b - running_mean) + beta (b = 0 for a conv with "
                    "bias=False): fused.bias = nn.Parameter(...)")
            if not r.get("folded") and g.get("bias") is not r["bias"]:
                raise AssertionError(
                    f"Conv2d '{r['name']}' {'lost' if r['bias'] else 'gained'} a bias ({where}): "
                    "no BatchNorm2d comes right after it, so it stays as it was")
        if r["kind"] == "BatchNorm2d":
            for key in ("num_features", "eps", "affine"):
                if g.get(key) != r[key]:
                    raise AssertionError(
                        f"BatchNorm2d '{r['name']}' has {key} {g.get(key)} in the folded model, "
                        f"expected {r[key]} ({where}): a BatchNorm2d that stays is kept as it was")


def _fold_variant(conv, bn, *, eps=True, beta=True, mean=True, conv_bias=True, axis=0):
    """What ``bn(conv(x))`` folds to with one known bug switched off (float64)."""
    torch = _torch()
    with torch.no_grad():
        scale = (bn.running_var + (bn.eps if eps else 0.0)).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale if mean else torch.zeros_like(scale)
        if beta and bn.bias is not None:
            shift = shift + bn.bias
        b = conv.bias if (conv.bias is not None and conv_bias) else torch.zeros_like(scale)
        fused = copy.deepcopy(conv)
        fused.weight.copy_(conv.weight * (scale.view(-1, 1, 1, 1) if axis == 0 else scale.view(1, -1, 1, 1)))
        fused.bias = torch.nn.Parameter(b * scale + shift)
    return fused


def _reference_fold(model, **bug):
    """``model`` folded (a copy, in eval mode), with at most one known bug; None when that bug
    changes nothing in this model (its hint would then name a correct answer)."""
    from torch import nn

    folded = copy.deepcopy(model).eval()
    pairs = []
    for seq in list(folded.modules()):
        if isinstance(seq, nn.Sequential):
            for i in range(1, len(seq)):
                if isinstance(seq[i - 1], nn.Conv2d) and _is_bn2d(seq[i]):
                    pairs.append((seq, i))
    convs = [seq[i - 1] for seq, i in pairs]
    bns = [seq[i] for seq, i in pairs]
    applies = {"conv_bias": any(c.bias is not None for c in convs),
               "beta": any(b.bias is not None for b in bns),
               "axis": all(c.weight.shape[1] == c.weight.shape[0] for c in convs)}
    if any(not applies.get(key, True) for key in bug):
        return None
    for seq, i in pairs:
        seq[i - 1] = _fold_variant(seq[i - 1], seq[i], **bug)
        seq[i] = nn.Identity()
    return folded


_FOLD_BUGS = (
    ({"eps": False}, "running_var is used without eps: scale = gamma / sqrt(running_var + eps), "
                     "with the BN's own bn.eps."),
    ({"conv_bias": False}, "a convolution's own bias was dropped: b' = scale * (b - running_mean) "
                           "+ beta, with b the conv's bias (0 only when it has none)."),
    ({"beta": False}, "beta (bn.bias) is missing from the folded bias: b' = scale * (b - "
                      "running_mean) + beta."),
    ({"mean": False}, "running_mean is missing from the folded bias: b' = scale * (b - "
                      "running_mean) + beta."),
    ({"axis": 1}, "the scale multiplies the weight's input-channel axis; BN scales each output "
                  "channel's filter: weight * scale.view(-1, 1, 1, 1)."),
)


def _fold_hints(model, x):
    torch = _torch()
    hints = []
    for bug, message in _FOLD_BUGS:
        folded = _reference_fold(model, **bug)
        if folded is not None:
            with torch.no_grad():
                hints.append(Hint(folded(x).numpy(), message))
    return hints


def _fold_model_public():
    head = [*_HEAD, ("linear", 4, 3)]
    specs = [
        # the lesson's shape: conv -> BN -> ReLU blocks, then a linear head
        ([[_conv(1, 4), _bn(4), ("relu",)], [_conv(4, 4), _bn(4), ("relu",)], *head], False),
        # flat pairs: a BN first that stays, a conv with bias, torch's BN without affine, a
        # grouped, strided and dilated conv
        ([_bn(4, eps=1e-3), _conv(4, 6, bias=True), _bn(6, "torch", affine=False, eps=1e-3),
          _conv(6, 4, stride=2, padding=2, dilation=2, groups=2), _bn(4, "torch", eps=0.1),
          ("relu",)], True),
        # BNs that stay: after a ReLU, after a pool; a 1x1 conv with bias folds
        ([_conv(3, 5, bias=True), ("relu",), _bn(5, "torch"), _conv(5, 5), ("pool",), _bn(5),
          _conv(5, 4, k=1, padding=0, bias=True), _bn(4, affine=False), *head], False),
    ]
    return [_fold_model_case(spec, seed, training, 2, 6, 5)
            for seed, (spec, training) in enumerate(specs)]


def _fold_model_spec(rng):
    """A random convnet: 2-4 segments, at least one conv -> BN pair to fold, channels 1..8."""
    c = int(rng.integers(1, 9))

    def bn(ch):
        return _bn(ch, "torch" if rng.random() < 0.5 else "minibn", affine=bool(rng.random() > 0.25),
                   eps=float(rng.choice([1e-5, 1e-3, 0.1])))

    spec = [bn(c)] if rng.random() < 0.3 else []
    segments = int(rng.integers(2, 5))
    for i in range(segments):
        pairs = ("block", "flat", "grouped")
        kind = str(rng.choice(pairs + ("relu_bn", "pool_bn")) if i else rng.choice(pairs))
        if kind == "grouped" and c % 2:
            kind = "flat"
        c_out = 2 * int(rng.integers(1, 5)) if kind == "grouped" else int(rng.integers(1, 9))
        bias = bool(rng.integers(0, 2))
        conv = _conv(c, c_out, bias=bias)
        if kind == "block":
            spec.append([conv, bn(c_out), ("relu",)])
        elif kind == "flat":
            k = int(rng.choice([1, 3]))
            spec += [_conv(c, c_out, k=k, padding=k // 2, bias=bias), bn(c_out)]
        elif kind == "grouped":
            spec += [_conv(c, c_out, stride=int(rng.integers(1, 3)), padding=2, dilation=2,
                           groups=2, bias=bias), bn(c_out)]
        else:
            spec += [conv, ("relu",) if kind == "relu_bn" else ("pool",), bn(c_out)]
        c = c_out
    if rng.random() < 0.5:
        spec += [*_HEAD, ("linear", c, 3)]
    return spec


def _fold_model_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(3):
        spec = _fold_model_spec(rng)
        n, h, w = (int(v) for v in (rng.integers(2, 4), rng.integers(4, 8), rng.integers(4, 8)))
        cases.append(_fold_model_case(spec, int(rng.integers(0, 2**31)), bool(rng.integers(0, 2)),
                                      n, h, w))
    return cases


FOLD = Exercise("fold_model", _fold_model_public, _fold_model_randomized, None,
                summary="a new eval-mode model computing model.eval()(x), every Conv2d -> "
                "BatchNorm2d pair folded into the conv, the given model untouched",
                compute=_fold_model_compute, judge=_fold_model_judge)
check_fold_model, check_fold_model_randomized = FOLD.checks(module=__name__)

EXERCISES = (BLOCK, EVALUATE, FOLD)

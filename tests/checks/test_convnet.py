"""The lesson 07 checks accept correct code and reject each known bug with its hint."""
import copy

import pytest
import torch
from torch import nn

from minibn.checks import convnet as checks
from minibn.nn import BatchNorm2d, fold_batchnorm


def block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), BatchNorm2d(c_out), nn.ReLU())


BLOCK_BUGS = {
    "conv bias": (lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()),
                  "bias=False"),
    "BN after ReLU": (lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.ReLU(),
                                                 nn.BatchNorm2d(b)), "before the nonlinearity"),
    "BatchNorm1d": (lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm1d(b),
                                               nn.ReLU()), "needs BatchNorm2d"),
    "no padding": (lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, bias=False), nn.BatchNorm2d(b), nn.ReLU()),
                   "padding 1"),
    "BN on input channels": (lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False),
                                                        nn.BatchNorm2d(a), nn.ReLU()), "num_features"),
    "returns a list": (lambda a, b: [nn.Conv2d(a, b, 3, padding=1, bias=False)], "nn.Module"),
}


def test_correct_block_passes():
    checks.check_conv_bn_relu(block)
    checks.check_conv_bn_relu(lambda a, b: nn.Sequential(
        nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)))
    for seed in (0, 1, 2):
        checks.check_conv_bn_relu_randomized(block, seed=seed)


@pytest.mark.parametrize("name", sorted(BLOCK_BUGS))
def test_block_bug_is_rejected_with_its_hint(name):
    fn, hint = BLOCK_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_conv_bn_relu(fn)
    assert hint in str(err.value)


def evaluate(model, x, y, batch_size=256):
    was = model.training
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(b).argmax(1) for b in x.split(batch_size)])
    model.train(was)
    return (preds == y).float().mean().item()


def eval_train_mode(model, x, y, batch_size=256):
    with torch.no_grad():
        preds = torch.cat([model(b).argmax(1) for b in x.split(batch_size)])
    return (preds == y).float().mean().item()


def eval_no_restore(model, x, y, batch_size=256):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def eval_on_copy_train_mode(model, x, y, batch_size=256):
    m = copy.deepcopy(model)
    with torch.no_grad():
        preds = torch.cat([m(b).argmax(1) for b in x.split(batch_size)])
    return (preds == y).float().mean().item()


EVAL_BUGS = {
    "forgot eval()": (eval_train_mode, "model.eval()"),
    "does not restore the mode": (eval_no_restore, "restore it"),
    "batch statistics on a copy": (eval_on_copy_train_mode, "batch statistics"),
    "returns a count": (lambda m, x, y, bs=256: int(evaluate(m, x, y, bs) * len(y)), "float"),
}


def test_correct_evaluate_passes():
    checks.check_evaluate_accuracy(evaluate)
    for seed in (0, 1, 2):
        checks.check_evaluate_accuracy_randomized(evaluate, seed=seed)


@pytest.mark.parametrize("name", sorted(EVAL_BUGS))
def test_evaluate_bug_is_rejected_with_its_hint(name):
    fn, hint = EVAL_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_evaluate_accuracy(fn)
    assert hint in str(err.value)


def fold_conv_bn(conv, bn):
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        b = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias = nn.Parameter(b * scale + shift)
    return fused


def walk(per_layer=fold_conv_bn, *, copy_first=True, eval_first=True, replace=nn.Identity, top_only=False,
         bn_types=(BatchNorm2d, nn.BatchNorm2d)):
    """``fold_model`` built from parts, each switch one way a learner's walk can go wrong."""
    def is_bn(m):
        return isinstance(m, bn_types)

    def fold_model(model):
        folded = copy.deepcopy(model) if copy_first else model
        if eval_first:
            folded.eval()
        seqs = [folded] if top_only else [m for m in folded.modules() if isinstance(m, nn.Sequential)]
        for seq in seqs:
            for i in range(len(seq) - 1, 0, -1):
                if isinstance(seq[i - 1], nn.Conv2d) and is_bn(seq[i]):
                    seq[i - 1] = per_layer(seq[i - 1], seq[i])
                    if replace is None:
                        del seq[i]
                    else:
                        seq[i] = replace()
        return folded
    return fold_model


def fold_into_last_conv(model):
    """Folds every BN into the last convolution before it, whatever lies between."""
    folded = copy.deepcopy(model).eval()
    last = None
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        for i, m in enumerate(seq):
            if isinstance(m, nn.Conv2d):
                last = (seq, i)
            elif isinstance(m, (BatchNorm2d, nn.BatchNorm2d)) and last is not None:
                s, j = last
                s[j] = fold_conv_bn(s[j], m)
                seq[i] = nn.Identity()
                last = None
    return folded


def rebuild_conv(conv, bn):
    """Copies the weights into a new convolution that forgets its groups."""
    fused = fold_conv_bn(conv, bn)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation).double()
    new.weight, new.bias = fused.weight, fused.bias
    return new


def no_new_bias(conv, bn):
    fused = fold_conv_bn(conv, bn)
    if conv.bias is None:
        fused.bias = None
    return fused


def affine_only(conv, bn):
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias = nn.Parameter(scale * (b - bn.running_mean) + bn.bias)
    return fused


def variant(**bug):
    return walk(lambda conv, bn: checks._fold_variant(conv, bn, **bug))


def returns_its_input(model):
    return model


FOLD_BUGS = {
    "running_var without eps": (variant(eps=False), "without eps"),
    "drops the conv's bias": (variant(conv_bias=False), "own bias was dropped"),
    "no beta": (variant(beta=False), "beta (bn.bias) is missing"),
    "no running_mean": (variant(mean=False), "running_mean is missing"),
    "scale on the input-channel axis": (variant(axis=1), "scale.view(-1, 1, 1, 1)"),
    "no bias on a folded conv": (walk(no_new_bias), "has no bias"),
    "BatchNorm2d(affine=False) not handled": (walk(affine_only), "affine=False) has weight and bias None"),
    "new conv loses its groups": (walk(rebuild_conv), "carry over"),
    "folded in training mode": (walk(eval_first=False), "in training mode"),
    "leaves the nested BN in place": (walk(top_only=True), "is still in the folded model"),
    "folds only minibn's BatchNorm2d": (walk(bn_types=BatchNorm2d), "torch's nn.BatchNorm2d"),
    "folds a BN that follows a ReLU": (fold_into_last_conv, "must stay"),
    "folds the given model in place": (walk(copy_first=False), "changed the model it was given"),
    "returns the model it was given": (returns_its_input, "returned the model it was given"),
}


def test_correct_fold_passes():
    for fn in (walk(), walk(replace=None), walk(fold_batchnorm)):
        checks.check_fold_model(fn)
        for seed in (0, 1, 2):
            checks.check_fold_model_randomized(fn, seed=seed)


@pytest.mark.parametrize("name", sorted(FOLD_BUGS))
def test_fold_bug_is_rejected_with_its_hint(name):
    fn, hint = FOLD_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_fold_model(fn)
    assert hint in str(err.value)
    with pytest.raises(AssertionError, match="randomized case"):
        for seed in range(10):
            checks.check_fold_model_randomized(fn, seed=seed)


def test_fold_leaves_the_model_it_was_given_as_it_was():
    """The public cases include a model in training mode, so a fold that calls model.eval() on
    the model it was given (not on its copy) changes the caller's mode."""
    def eval_then_copy(model):
        return walk()(model.eval())

    with pytest.raises(AssertionError, match="its mode"):
        checks.check_fold_model(eval_then_copy)


def _across_the_wire(answers):
    """What the grader receives from the sandbox: the answers as JSON, the learner's exception by
    its type and message only (as ``minibn.grading.verdict.Session.compute`` rebuilds it)."""
    import json

    from minibn.grading import verdict, wire

    raised = answers.pop("raised", None)
    back = wire.decode(json.loads(json.dumps(wire.encode(answers))))
    if raised is not None:
        back["raised"] = verdict._remote_exception(type(raised).__name__, str(raised))
    return back


@pytest.mark.parametrize("name", ["correct", *sorted(FOLD_BUGS)])
def test_fold_verdict_needs_only_the_answers_as_data(name):
    """compute's answers cross as plain data, and judge, given them and a case it rebuilt itself,
    reaches the verdict it reaches in one process (the same message, hint included)."""
    fn = walk() if name == "correct" else FOLD_BUGS[name][0]
    fold = checks.FOLD
    # one process, the sandbox and the grader each build their own cases
    for here, sandbox, grader in zip(fold.public_cases(), fold.public_cases(), fold.public_cases()):
        answers = _across_the_wire(fold.compute(fn, sandbox))
        try:
            fold.judge(fold.compute(fn, here), here)
        except AssertionError as err:
            with pytest.raises(AssertionError) as remote:
                fold.judge(answers, grader)
            assert str(remote.value) == str(err)
            return
        fold.judge(answers, grader)
    assert name == "correct", "every known bug fails a public case"

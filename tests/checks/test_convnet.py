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


def fold(conv, bn):
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias = nn.Parameter(scale * (b - bn.running_mean) + bn.bias)
    return fused


def fold_variant(**kw):
    def f(conv, bn):
        return checks._fold_variant(conv, bn, **kw)
    return f


def fold_in_place(conv, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
    return conv


FOLD_BUGS = {
    "no eps": (fold_variant(eps=False), "eps is missing"),
    "no beta": (fold_variant(beta=False), "beta is missing"),
    "drops conv bias": (fold_variant(conv_bias=False), "bias was dropped"),
    "input-channel axis": (fold_variant(axis=1), "input-channel axis"),
    "mutates conv": (fold_in_place, "modified its inputs"),
}


@pytest.mark.parametrize("fn", [fold, fold_batchnorm])
def test_correct_fold_passes(fn):
    checks.check_fold_conv_bn(fn)
    for seed in (0, 1, 2):
        checks.check_fold_conv_bn_randomized(fn, seed=seed)


@pytest.mark.parametrize("name", sorted(FOLD_BUGS))
def test_fold_bug_is_rejected_with_its_hint(name):
    fn, hint = FOLD_BUGS[name]
    with pytest.raises(AssertionError) as err:
        checks.check_fold_conv_bn(fn)
    assert hint in str(err.value)
    with pytest.raises(AssertionError, match="randomized case|modified"):
        for seed in (5, 6, 7):
            checks.check_fold_conv_bn_randomized(fn, seed=seed)

"""minibn.checks.conv_torch accepts a correct autograd Function and module, and rejects known
bugs with the expected hint."""
from __future__ import annotations

import pytest
import torch

from minibn.checks import conv_torch as chk
from minibn.grading import conventions

torch.set_num_threads(1)
DIMS = (0, 2, 3)


def _c(v):
    return v.view(1, -1, 1, 1)


class GoodFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean = x.mean(DIMS, keepdim=True)
        var = x.var(DIMS, keepdim=True, correction=0)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (x - mean) * inv_std
        ctx.save_for_backward(x_hat, inv_std, weight)
        return x_hat * _c(weight) + _c(bias)

    @staticmethod
    def backward(ctx, dout):
        x_hat, inv_std, weight = ctx.saved_tensors
        m = dout.numel() // dout.shape[1]
        dbias = dout.sum(DIMS)
        dweight = (dout * x_hat).sum(DIMS)
        dx = _c(weight) * inv_std / m * (m * dout - _c(dbias) - x_hat * _c(dweight))
        return dx, dweight, dbias, None


def make_module(function=GoodFunction, unbiased=True, reverse=False, eval_batch=False,
                count=True, check_dims=True):
    class Module(torch.nn.Module):
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__()
            self.eps, self.momentum = eps, momentum
            self.weight = torch.nn.Parameter(torch.ones(num_features))
            self.bias = torch.nn.Parameter(torch.zeros(num_features))
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

        def forward(self, x):
            if check_dims and x.dim() != 4:
                raise ValueError(f"expected 4D input (got {x.dim()}D input)")
            if self.training or eval_batch:
                m = x.numel() // x.shape[1]
                if m <= 1:
                    raise ValueError("Expected more than 1 value per channel when training")
                if self.training:
                    with torch.no_grad():
                        f = 1 - self.momentum if reverse else self.momentum
                        var = x.var(DIMS, correction=1 if unbiased else 0)
                        self.running_mean.mul_(1 - f).add_(f * x.mean(DIMS))
                        self.running_var.mul_(1 - f).add_(f * var)
                        if count:
                            self.num_batches_tracked += 1
                return function.apply(x, self.weight, self.bias, self.eps)
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)
            return x * _c(scale) + _c(self.bias - self.running_mean * scale)

    Module.__name__ = "BatchNorm2d"
    return Module


def test_correct_function_and_module_pass():
    assert chk.check_batchnorm_function(GoodFunction) is None
    assert chk.check_batchnorm_module(make_module()) is None


@pytest.mark.parametrize("seed", range(3))
def test_randomized_checks_pass_correct_code(seed):
    chk.check_batchnorm_function_randomized(GoodFunction, seed=seed)
    chk.check_batchnorm_module_randomized(make_module(), seed=seed)


def test_the_reference_module_passes_the_module_check():
    from minibn.nn import BatchNorm2d

    chk.check_batchnorm_module(BatchNorm2d)


# --- Function bugs ---------------------------------------------------------------------------

def function_with(forward=None, backward=None, name="BadFunction"):
    attrs = {}
    if forward:
        attrs["forward"] = staticmethod(forward)
    if backward:
        attrs["backward"] = staticmethod(backward)
    return type(name, (GoodFunction,), attrs)


def _forward_dims(dims, correction=0):
    def forward(ctx, x, weight, bias, eps):
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, keepdim=True, correction=correction)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (x - mean) * inv_std
        ctx.save_for_backward(x_hat, inv_std, weight)
        return x_hat * _c(weight) + _c(bias)
    return forward


def backward_frozen(ctx, dout):
    x_hat, inv_std, weight = ctx.saved_tensors
    return dout * _c(weight) * inv_std, (dout * x_hat).sum(DIMS), dout.sum(DIMS), None


def backward_no_gamma(ctx, dout):
    x_hat, inv_std, weight = ctx.saved_tensors
    dx, dw, db, _ = GoodFunction.backward(ctx, dout)
    return dx / _c(weight), dw, db, None


def backward_swapped(ctx, dout):
    dx, dw, db, _ = GoodFunction.backward(ctx, dout)
    return dx, db, dw, None


def forward_loses_layout(ctx, x, weight, bias, eps):
    return GoodFunction.forward(ctx, x.contiguous(), weight, bias, eps)


FUNCTION_BUGS = {
    "per_position": (function_with(_forward_dims((0,))), "over N only"),
    "per_sample": (function_with(_forward_dims((1, 2, 3))), "LayerNorm"),
    "unbiased": (function_with(_forward_dims(DIMS, correction=1)), "biased variance"),
    "frozen": (function_with(backward=backward_frozen), "paths through the batch mean"),
    "no_gamma": (function_with(backward=backward_no_gamma), "missing the factor weight"),
    "swapped": (function_with(backward=backward_swapped), "swapped"),
    "layout": (function_with(forward_loses_layout), "channels_last"),
}


@pytest.mark.parametrize("name", list(FUNCTION_BUGS))
def test_function_bugs_are_caught(name):
    fn, hint = FUNCTION_BUGS[name]
    with pytest.raises(AssertionError) as err:
        chk.check_batchnorm_function(fn)
    assert hint in str(err.value)


def test_function_must_be_an_autograd_function():
    with pytest.raises(AssertionError, match="torch.autograd.Function"):
        chk.check_batchnorm_function(lambda x: x)


def test_function_called_without_apply_is_caught():
    class Autograd(torch.autograd.Function):
        @staticmethod
        def apply(x, weight, bias, eps):  # autograd of the forward, not the learner's backward
            mean = x.mean(DIMS, keepdim=True)
            var = x.var(DIMS, keepdim=True, correction=0)
            return (x - mean) * torch.rsqrt(var + eps) * _c(weight) + _c(bias)

    with pytest.raises(AssertionError, match="grad_fn"):
        chk.check_batchnorm_function(Autograd)


# --- module bugs -----------------------------------------------------------------------------

class TorchInside(torch.nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(num_features, eps, momentum)


MODULE_BUGS = {
    "biased_running_var": (make_module(unbiased=False), "unbiased batch"),
    "reversed_momentum": (make_module(reverse=True), "momentum is reversed"),
    "eval_uses_batch_stats": (make_module(eval_batch=True), "not with the batch's statistics"),
    "no_count": (make_module(count=False), "num_batches_tracked"),
    "no_dim_check": (make_module(check_dims=False), "3D input"),
    "torch_inside": (TorchInside, "torch's own batch norm"),
    "buggy_function": (make_module(FUNCTION_BUGS["frozen"][0]), "dx"),
}


@pytest.mark.parametrize("name", list(MODULE_BUGS))
def test_module_bugs_are_caught(name):
    cls, hint = MODULE_BUGS[name]
    with pytest.raises(AssertionError) as err:
        chk.check_batchnorm_module(cls)
    assert hint in str(err.value)


def test_module_with_parameters_as_buffers_is_caught():
    class Wrong(make_module()):
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__(num_features, eps, momentum)
            del self.running_mean
            self.running_mean = torch.nn.Parameter(torch.zeros(num_features))

    with pytest.raises(AssertionError, match="register_buffer"):
        chk.check_batchnorm_module(Wrong)


# --- the lesson notebook (tests/test_notebooks.py runs it; here: what is specific to it) ---

LESSON = "solutions/04-conv-torch/04-conv-torch.ipynb"


def _lesson():
    import pathlib

    import nbformat

    return nbformat.read(pathlib.Path(__file__).parents[2] / LESSON, as_version=4)


def test_lesson_follows_the_notebook_conventions():
    nb = _lesson()
    assert conventions.problems(nb) == []  # the rules every lesson follows
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "from minibn.course import setup\nFAST = setup(torch=True)" in code[0].source
    for i, cell in enumerate(nb.cells):
        if cell.id.endswith("-solution"):
            name = cell.metadata["nbgrader"]["grade_id"]
            test = nb.cells[i + 1]
            assert test.metadata["nbgrader"]["grade_id"] == f"test_{name}"
            assert "### BEGIN HIDDEN TESTS" in test.source and f"({name})" in test.source
    imports = "\n".join(c.source for c in code)
    assert "minibn.nn" not in imports  # the learner writes the module; no reference imported


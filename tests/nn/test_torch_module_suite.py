"""PyTorch's generic module tests, run on minibn's normalization modules with torch's as a control.

The modules: ``BatchNorm1d/2d/3d``, and lesson 09's ``GroupNorm``, ``LayerNorm`` and
``InstanceNorm2d``.

torch ships its module database (``torch.testing._internal.common_modules``: one ``ModuleInfo``
per module, with constructor arguments, inputs and the error cases) in the wheel, but not the
test file that runs it (upstream ``test/test_modules.py``, class ``TestModule``). This file
reimplements that class's tests, one method per upstream test and with upstream's logic (what
it builds, calls and compares), here for the entries of the modules above only. Each entry is run
twice: as shipped (torch's class, the control, which must pass everywhere so that a failure is
minibn's) and with ``module_cls`` replaced by minibn's class (test names ``..._minibn_...``).

Differences from upstream, each on purpose:
- ``test_gradgrad`` runs as upstream (gradgradcheck in fast mode, with batched gradients); the
  added ``test_gradgrad_strict`` checks every element of the second derivative (slow mode).
- torch's error-input function picks the input rank by comparing ``module_cls`` with torch's
  classes; for minibn's entry it is asked with torch's entry, so the two get the same inputs.
- Upstream's CUDA-only tests (device transfer, CPU/GPU parity) are collected here too; on a
  machine without a GPU they are skipped by the same ``onlyAccelerator`` guard as upstream.
"""
from __future__ import annotations

import tempfile
from copy import deepcopy
from itertools import chain, product
from operator import methodcaller
from unittest.mock import patch

import pytest
import torch
from torch._subclasses.meta_utils import assert_metadata_eq
from torch.testing._internal.common_device_type import (
    instantiate_device_type_tests,
    onlyAccelerator,
)
from torch.testing._internal.common_modules import (
    ModuleErrorEnum,
    ModuleInfo,
    TrainEvalMode,
    module_db,
    modules,
)
from torch.testing._internal.common_utils import (
    TestCase,
    freeze_rng_state,
    get_tensors_from,
    gradcheck,
    gradgradcheck,
    mock_wrapper,
    parametrize,
    wrapSwapTensorsTest,
)

from minibn import nn as mnn

_PAIRS = {torch.nn.BatchNorm1d: mnn.BatchNorm1d, torch.nn.BatchNorm2d: mnn.BatchNorm2d,
          torch.nn.BatchNorm3d: mnn.BatchNorm3d, torch.nn.GroupNorm: mnn.GroupNorm,
          torch.nn.LayerNorm: mnn.LayerNorm, torch.nn.InstanceNorm2d: mnn.InstanceNorm2d}


class _MinibnModuleInfo(ModuleInfo):
    """A torch ModuleInfo entry with its module class swapped for minibn's."""

    def __init__(self, torch_info):
        # The error inputs choose the input rank by `module_cls == torch.nn.BatchNorm1d` (and 2d):
        # ask with torch's entry so minibn's class gets the very same inputs.
        torch_errors = torch_info.module_error_inputs_func
        super().__init__(
            _PAIRS[torch_info.module_cls],
            module_inputs_func=torch_info.module_inputs_func,
            decorators=torch_info.decorators,
            dtypes=torch_info.dtypes,
            supports_gradgrad=torch_info.supports_gradgrad,
            gradcheck_nondet_tol=torch_info.gradcheck_nondet_tol,
            module_memformat_affects_out=torch_info.module_memformat_affects_out,
            train_and_eval_differ=torch_info.train_and_eval_differ,
            module_error_inputs_func=None if torch_errors is None else
            lambda _info, **kwargs: torch_errors(torch_info, **kwargs),
            gradcheck_fast_mode=torch_info.gradcheck_fast_mode,
        )

    @property
    def name(self):
        return f"minibn.{self.module_cls.__name__}"


TORCH_INFOS = [info for info in module_db if info.module_cls in _PAIRS]
MINIBN_INFOS = [_MinibnModuleInfo(info) for info in TORCH_INFOS]
DB = MINIBN_INFOS + TORCH_INFOS
assert len(TORCH_INFOS) == len(_PAIRS), "torch's module database lost an entry tested here"


def _traverse(obj, fn):
    """Apply ``fn`` to every tensor in nested tuples/lists/dicts (upstream's _traverse_obj)."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(_traverse(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _traverse(v, fn) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    return obj


def _retain_grad(obj):
    _traverse(obj, lambda t: t.retain_grad() if t.requires_grad else None)


def _grads(obj):
    return _traverse(obj, lambda t: t.grad if t.requires_grad else None)


def _zero_grad(obj):
    def zero(t):
        t.grad = None
    _traverse(obj, zero)


def _build(module_info, module_input, device, dtype, training):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    m = module_info.module_cls(*args, **kwargs)
    m.to(device).to(dtype)
    m.train(training)
    return m


class TestModule(TestCase):
    """Upstream's TestModule tests that apply to BatchNorm (no inplace, lazy or RNN cases)."""

    precision = 1e-5
    rel_tol = 1e-5

    def _assert_placement(self, module, device, dtype):
        device = torch.device(device)
        for kind, items in (("Parameter", module.named_parameters()),
                            ("Buffer", module.named_buffers())):
            for name, t in items:
                self.assertEqual(t.device, device, msg=f"{kind} {name} is on {t.device}")
                if t.dtype.is_floating_point:
                    self.assertEqual(t.dtype, dtype, msg=f"{kind} {name} is {t.dtype}")

    @modules(DB)
    def test_forward(self, device, dtype, module_info, training):
        to_dtype = {torch.float32: methodcaller("float"), torch.float64: methodcaller("double")}
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=False, training=training):
            with freeze_rng_state():
                m = _build(module_info, module_input, device, dtype, training)
                args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                outputs = m(*args, **kwargs)
                if module_input.reference_fn is not None:
                    self.assertEqual(outputs, module_input.reference_fn(m, *args, **kwargs))
                if dtype in to_dtype:  # upstream converts float32/float64 only
                    to_dtype[dtype](m)
                    m(*args, **kwargs)
                    self._assert_placement(m, device, dtype)

    @modules(DB)
    def test_factory_kwargs(self, device, dtype, module_info, training):
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=False, training=training):
            args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            # Does the constructor make parameters or buffers from tensors it was not given?
            parameter_new = mock_wrapper(torch.nn.Parameter.__new__)
            register_buffer = mock_wrapper(torch.nn.Module.register_buffer)
            with patch.object(torch.nn.Parameter, "__new__", parameter_new), \
                    patch.object(torch.nn.Module, "register_buffer", register_buffer):
                module_info.module_cls(*args, **kwargs).train(training)
            given = get_tensors_from(args, kwargs)
            creates = any(
                get_tensors_from(a, k) and not given.intersection(get_tensors_from(a, k))
                for mock in (parameter_new.mock, register_buffer.mock)
                for a, k in mock.call_args_list)
            if not creates:
                continue
            m = module_info.module_cls(*args, **dict(kwargs, device=device, dtype=dtype))
            m.train(training)
            self._assert_placement(m, device, dtype)

    @onlyAccelerator
    @modules(DB)
    def test_multiple_device_transfer(self, device, dtype, module_info, training):
        inputs_device = module_info.module_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=False, training=training)
        inputs_cpu = module_info.module_inputs_func(
            module_info, device="cpu", dtype=dtype, requires_grad=False, training=training)
        for on_device, on_cpu in zip(inputs_device, inputs_cpu):
            with freeze_rng_state():
                m = _build(module_info, on_device, device, dtype, training)
                m(*on_device.forward_input.args, **on_device.forward_input.kwargs)
                self._assert_placement(m, device, dtype)
                m.cpu()
                m(*on_cpu.forward_input.args, **on_cpu.forward_input.kwargs)
                self._assert_placement(m, "cpu", dtype)
                m.to(device)
                m(*on_device.forward_input.args, **on_device.forward_input.kwargs)
                self._assert_placement(m, device, dtype)

    @modules(DB)
    def test_repr(self, device, dtype, module_info, training):
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=False, training=training):
            m = _build(module_info, module_input, device, dtype, training)
            m.__repr__()
            str(m)

    @modules(DB)
    def test_save_load(self, device, dtype, module_info, training):
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=False, training=training):
            with freeze_rng_state():
                m = _build(module_info, module_input, device, dtype, training)
                sd = m.state_dict()
                args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
                output = m(*args, **kwargs)
                with tempfile.TemporaryFile() as f:
                    torch.save(m, f)
                    f.seek(0)
                    copy = torch.load(f, weights_only=False)
                    self.assertEqual(output, copy(*args, **kwargs))
                with tempfile.TemporaryFile() as f:
                    torch.save(sd, f)
                    f.seek(0)
                    self.assertEqual(torch.load(f), sd)
                    f.seek(0)
                    self.assertEqual(torch.load(f, weights_only=True), sd)

    @modules(DB)
    def test_non_contiguous_tensors(self, device, dtype, module_info, training):
        def non_contiguous(obj):
            def make(t):
                if t.dim() == 0:
                    return t
                out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
                out.requires_grad = t.requires_grad
                return out
            return _traverse(obj, make)

        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=True, training=training):
            args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            m = _build(module_info, module_input, device, dtype, training)
            _retain_grad((args, kwargs))
            with freeze_rng_state():
                default_output = m(*args, **kwargs)
                grad_output = default_output.clone().detach_().normal_()
                default_output.backward(grad_output, retain_graph=True)
            default_input_grads = deepcopy(_grads((args, kwargs)))
            default_param_grads = deepcopy([p.grad for p in m.parameters()])
            inputs = [(args, kwargs), non_contiguous((args, kwargs))]
            grads = [grad_output, non_contiguous(grad_output)]
            for (in_args, in_kwargs), g_out in product(inputs, grads):
                _zero_grad((in_args, in_kwargs))
                _zero_grad(list(m.parameters()))
                with freeze_rng_state():
                    out = m(*in_args, **in_kwargs)
                    out.backward(deepcopy(g_out), retain_graph=True)
                self.assertEqual(out, default_output)
                input_grads = _grads((in_args, in_kwargs))
                self.assertEqual(input_grads[0], default_input_grads[0], atol=1e-4, rtol=0)
                self.assertEqual(input_grads[1], default_input_grads[1], atol=1e-4, rtol=0)
                self.assertEqual([p.grad for p in m.parameters()], default_param_grads)

    def _check_gradients(self, device, dtype, module_info, training, check, partials=True):
        """Upstream's _test_gradients_helper: ``check`` over the input and every parameter
        together, then (``partials``) over the input with each parameter alone."""
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=True, training=training):
            m = _build(module_info, module_input, device, dtype, training)
            params = tuple(m.parameters())
            input_args = module_input.forward_input.args
            self.assertEqual(module_input.forward_input.kwargs, {})

            def fn(*flat):
                with freeze_rng_state():
                    return m(*flat[:len(input_args)])

            def do_check(flat):
                self.assertTrue(check(fn, flat, nondet_tol=module_info.gradcheck_nondet_tol
                                      if torch.device(device).type != "cpu" else 0.0,
                                      fast_mode=module_info.gradcheck_fast_mode))

            do_check(input_args + params)
            if not partials:
                continue
            old = [p.requires_grad for p in params]
            for p in params:
                p.requires_grad = False
            for p, was in zip(params, old):
                p.requires_grad = was
                do_check(input_args + params)
                p.requires_grad = False

    @modules(DB, allowed_dtypes=[torch.double])
    def test_grad(self, device, dtype, module_info, training):
        self._check_gradients(device, dtype, module_info, training, gradcheck)

    @modules([m for m in DB if m.supports_gradgrad], allowed_dtypes=[torch.double])
    def test_gradgrad(self, device, dtype, module_info, training):
        self._check_gradients(device, dtype, module_info, training, gradgradcheck)

    @pytest.mark.slow
    @modules([m for m in DB if m.supports_gradgrad], allowed_dtypes=[torch.double])
    def test_gradgrad_strict(self, device, dtype, module_info, training):
        # Not upstream's: every element of the second derivative (slow mode) with respect to
        # the input and all parameters at once, not a random projection. The partial cases
        # (some parameters frozen) run in test_gradgrad.
        def strict(fn, inputs, **kwargs):
            kwargs["fast_mode"] = False
            return gradgradcheck(fn, inputs, **kwargs)
        self._check_gradients(device, dtype, module_info, training, strict, partials=False)

    @onlyAccelerator
    @modules(DB)
    def test_cpu_gpu_parity(self, device, dtype, module_info, training):
        tol = {"atol": 5e-2 if dtype == torch.float32 else 4e-4, "rtol": 0}
        for module_input in module_info.module_inputs_func(
                module_info, device="cpu", dtype=dtype, requires_grad=True, training=training):
            cpu_args = module_input.forward_input.args
            gpu_args = tuple(a.detach().to(device).requires_grad_(a.requires_grad) for a in cpu_args)
            _retain_grad((cpu_args, gpu_args))
            args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            cpu_m = module_info.module_cls(*args, **kwargs).to(dtype).to("cpu").train(training)
            gpu_m = module_info.module_cls(*args, **kwargs).to(dtype).to(device).train(training)
            for p_cpu, p_gpu in zip(cpu_m.parameters(), gpu_m.parameters()):
                p_gpu.data.copy_(p_cpu)
            cpu_out, gpu_out = cpu_m(*cpu_args), gpu_m(*gpu_args)
            self.assertEqual(cpu_out, gpu_out, **tol)
            for _ in range(5):
                g = cpu_out.clone().normal_()
                cpu_out.backward(g, retain_graph=True)
                gpu_out.backward(g.type_as(gpu_out), retain_graph=True)
                self.assertEqual(_grads(cpu_args), _grads(gpu_args), **tol)
                for p_cpu, p_gpu in zip(cpu_m.parameters(), gpu_m.parameters()):
                    self.assertEqual(p_cpu.grad, p_gpu.grad, **tol)

    @modules(DB)
    def test_memory_format(self, device, dtype, module_info, training):
        def formats(ndim):
            special = {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)
            if special is None:
                return [torch.contiguous_format], [torch.preserve_format, torch.contiguous_format]
            return ([torch.contiguous_format, special],
                    [torch.preserve_format, torch.contiguous_format, special])

        def to_format(fmt, t):
            if (fmt == torch.channels_last and t.dim() != 4) or \
                    (fmt == torch.channels_last_3d and t.dim() != 5):
                return t.detach().clone().requires_grad_(t.requires_grad)
            return t.clone().to(memory_format=fmt).detach().requires_grad_(t.requires_grad)

        def check_format(t, input_fmt, module_fmt):
            affects = module_info.module_memformat_affects_out
            if t.dim() == 4 and (input_fmt == torch.channels_last or
                                 (module_fmt == torch.channels_last and affects)):
                self.assertTrue(t.numel() == 0 or t.is_contiguous(memory_format=torch.channels_last))
            elif t.dim() == 5 and (input_fmt == torch.channels_last_3d or
                                   (module_fmt == torch.channels_last_3d and affects)):
                self.assertTrue(t.numel() == 0 or
                                t.is_contiguous(memory_format=torch.channels_last_3d))
            else:
                self.assertTrue(t.is_contiguous())

        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=True, training=training):
            (x,) = module_input.forward_input.args
            input_formats, module_formats = formats(x.dim())
            with freeze_rng_state():
                m = _build(module_info, module_input, device, dtype, training)
                desired = m(x)
                params = tuple(m.parameters())
                if training:
                    ref_grad_out = torch.rand_like(desired)
                    ref_grads = torch.autograd.grad(desired, (x,) + params, ref_grad_out)
                for input_fmt in input_formats:
                    xf = to_format(input_fmt, x)
                    for module_fmt in module_formats:
                        m.to(memory_format=module_fmt)
                        out = m(xf)
                        if input_fmt != torch.contiguous_format or \
                                module_fmt != torch.contiguous_format:
                            self.assertEqual(out, desired)
                        check_format(out, input_fmt, module_fmt)
                        if training:
                            g = torch.empty_like(out).copy_(ref_grad_out)
                            grads = torch.autograd.grad(out, (xf,) + tuple(m.parameters()), g)
                            if input_fmt != torch.contiguous_format or \
                                    module_fmt != torch.contiguous_format:
                                self.assertEqual(grads, ref_grads)
                            for t in grads:
                                check_format(t, input_fmt, module_fmt)

    @modules(DB, train_eval_mode=TrainEvalMode.train_only)
    def test_if_train_and_eval_modes_differ(self, device, dtype, module_info, training):
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=False, training=training):
            m = _build(module_info, module_input, device, dtype, training)
            delattr(m, "training")
            try:
                m(*module_input.forward_input.args, **module_input.forward_input.kwargs)
            except AttributeError as e:
                if "'training'" not in str(e):
                    raise
                self.assertTrue(module_info.train_and_eval_differ)

    @modules([m for m in DB if m.module_error_inputs_func is not None])
    def test_errors(self, device, dtype, module_info, training):
        error_inputs = module_info.module_error_inputs_func(
            module_info, device=device, dtype=dtype, requires_grad=False, training=training)
        self.assertTrue(error_inputs)
        for error_input in error_inputs:
            module_input = error_input.module_error_input
            c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            if error_input.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
                with self.assertRaisesRegex(error_input.error_type, error_input.error_regex):
                    module_info.module_cls(*c_args, **c_kwargs)
            else:
                m = module_info.module_cls(*c_args, **c_kwargs)
                with self.assertRaisesRegex(error_input.error_type, error_input.error_regex):
                    m(*module_input.forward_input.args, **module_input.forward_input.kwargs)

    @modules([m for m in DB if not m.is_lazy], allowed_dtypes=[torch.float32])
    @parametrize("swap", [True, False])
    @parametrize("set_grad", [True, False])
    @wrapSwapTensorsTest()
    def test_to(self, device, dtype, module_info, training, swap, set_grad):
        devices = ["cpu"] + ([torch.device(device).type] if torch.accelerator.is_available() else [])
        torch.__future__.set_swap_module_params_on_conversion(swap)
        for module_input in module_info.module_inputs_func(
                module_info, device=device, dtype=dtype, requires_grad=False, training=training):
            c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
            m = module_info.module_cls(*c_args, **c_kwargs)
            # Place the parameters without Module.to(), the method under test.
            for n, p in list(m.named_parameters(recurse=False)):
                new_p = torch.nn.Parameter(p.detach().clone().to(device, dtype))
                setattr(m, n, new_p)
                if set_grad:
                    new_p.grad = torch.randn_like(new_p)
            for n, b in list(m.named_buffers(recurse=False)):
                setattr(m, n, b.detach().clone().to(device, dtype))
            if swap and not set_grad and list(m.parameters()):
                m(*args, **kwargs).sum().backward()
                m.to(dtype=torch.half)
                m.to(dtype=torch.float32)
            prev = (device, dtype)
            for device_, dtype_ in product(devices, module_info.dtypes):
                unchanged = (device_, dtype_) == prev
                prev = (device_, dtype_)
                ids = [id(p) for p in m.parameters()]
                cdatas = [p._cdata for p in m.parameters()]
                if set_grad:
                    g_ids = [id(p.grad) for p in m.parameters()]
                    g_cdatas = [p.grad._cdata for p in m.parameters()]
                m.to(device=device_, dtype=dtype_)
                self.assertTrue(all(isinstance(p, torch.nn.Parameter) for p in m.parameters()))
                self.assertTrue(all(p.device.type == device_ for p in m.parameters()))
                self.assertTrue(all(p.dtype == dtype_ for p in m.parameters()))
                if set_grad:
                    self.assertTrue(all(p.grad.device.type == device_ for p in m.parameters()))
                    self.assertTrue(all(p.grad.dtype == dtype_ for p in m.parameters()))
                self.assertEqual(ids, [id(p) for p in m.parameters()])
                if swap:  # same Python objects, new tensor data
                    self.assertTrue(all(a != b for a, b in
                                        zip(cdatas, [p._cdata for p in m.parameters()])))
                    if set_grad:
                        after = [p.grad._cdata for p in m.parameters()]
                        self.assertTrue(all((a == b) if unchanged else (a != b)
                                            for a, b in zip(g_cdatas, after)))
                else:  # .data was set in place
                    self.assertEqual(cdatas, [p._cdata for p in m.parameters()])
                    if set_grad:
                        self.assertEqual(g_cdatas, [p.grad._cdata for p in m.parameters()])
                        self.assertEqual(g_ids, [id(p.grad) for p in m.parameters()])

    @modules([m for m in DB if not m.is_lazy], allowed_dtypes=[torch.float32])
    @parametrize("swap", [True, False])
    @wrapSwapTensorsTest()
    def test_to_empty(self, device, dtype, module_info, swap, training):
        with torch.device("meta"):
            module_inputs = module_info.module_inputs_func(
                module_info, device=None, dtype=dtype, requires_grad=False, training=training)
        torch.__future__.set_swap_module_params_on_conversion(swap)
        device_ = torch.device(device)
        for module_input in module_inputs:
            c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            with torch.device("meta"):
                m = module_info.module_cls(*c_args, **c_kwargs)
            ids = [id(p) for p in m.parameters()]
            cdatas = [p._cdata for p in m.parameters()]
            m.to_empty(device=device_)
            self.assertTrue(all(isinstance(p, torch.nn.Parameter) for p in m.parameters()))
            self.assertTrue(all(p.device == device_ for p in m.parameters()))
            self.assertTrue(all(p.dtype == dtype for p in m.parameters()))
            new_ids = [id(p) for p in m.parameters()]
            new_cdatas = [p._cdata for p in m.parameters()]
            self.assertTrue(all(a != b for a, b in zip(cdatas, new_cdatas)))
            if swap:
                self.assertEqual(ids, new_ids)
            else:  # meta and real tensors differ in kind, so new Parameters are made
                self.assertTrue(all(a != b for a, b in zip(ids, new_ids)))


class TestModuleCPUOnly(TestCase):
    """Upstream's CPU-only class: a module built under ``torch.device('meta')`` has the same
    parameter and buffer metadata as one built on the CPU."""

    @modules(DB)
    def test_device_ctx_init(self, dtype, module_info, training):
        module_inputs = module_info.module_inputs_func(
            module_info, device="cpu", dtype=dtype, requires_grad=False, training=training)
        with torch.device("meta"):
            meta_inputs = module_info.module_inputs_func(
                module_info, device=None, dtype=dtype, requires_grad=False, training=training)
        for module_input, meta_input in zip(module_inputs, meta_inputs):
            c_args, c_kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
            m_cpu = module_info.module_cls(*c_args, **c_kwargs)
            with torch.device("meta"):
                m = module_info.module_cls(*meta_input.constructor_input.args,
                                           **meta_input.constructor_input.kwargs)
            for p_meta, p_cpu in chain(zip(m.parameters(), m_cpu.parameters()),
                                       zip(m.buffers(), m_cpu.buffers())):
                self.assertTrue(p_meta.is_meta)
                assert_metadata_eq(self.assertEqual, p_meta, p_cpu)


instantiate_device_type_tests(TestModule, globals(), only_for=("cpu", "cuda"))
instantiate_device_type_tests(TestModuleCPUOnly, globals(), only_for="cpu")

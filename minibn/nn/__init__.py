"""Batch Normalization as drop-in ``torch.nn`` modules, plus the inference-time tools.

- ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d`` (``minibn.nn.modules``): the same
  constructor, parameters, buffers, ``state_dict`` keys, train/eval behaviour, hooks and errors as
  ``torch.nn.BatchNorm*d``, so a checkpoint loads into either. PyTorch's own generic module tests
  run on them (``tests/nn/test_torch_module_suite.py``).
- ``minibn.nn.functional.batch_norm``: ``torch.nn.functional.batch_norm``'s signature and
  checks; training mode runs through ``BatchNormFunction`` (``minibn.nn.function``), whose
  backward is minibn's closed form (``minibn.functional.batchnorm_backward``) in differentiable
  torch ops: double backward, ``torch.func`` transforms and batched gradients work. On CPU
  the same closed form runs as fused C++ loops where it can (``minibn.nn.fused``, compiled
  with g++ on first use; the composite ops otherwise).
- ``GroupNorm``, ``LayerNorm``, ``InstanceNorm2d`` (``minibn.nn.group_norm``): drop-ins for
  torch's, normalizing inside each sample through the same closed-form ``BatchNormFunction``.
- ``BatchRenorm2d`` (``minibn.nn.batch_renorm``): Batch Renormalization (Ioffe 2017), batch
  statistics corrected towards the running ones by clipped ``r``, ``d``.
- ``GhostBatchNorm`` and ``ghost_batch_norm`` (``minibn.nn.ghost``): batch norm over virtual
  batches of a fixed size inside each batch (Hoffer et al. 2017).
- ``SyncBatchNorm`` and ``convert_sync_batchnorm`` (``minibn.nn.sync_batchnorm``): the
  statistics of one batch spread over a ``torch.distributed`` process group, on gloo (CPU) or
  NCCL; ``run_distributed`` starts and always stops a local gloo group.
- ``precise_bn(model, batches)`` and ``fold_batchnorm(layer, bn)`` (``minibn.nn.inference``):
  population statistics after training, and folding an eval-mode BN into the layer before it.

The conventions (channel axis, biased/unbiased variance, momentum, the checks and their
messages) are ``minibn.conventions``, shared with the NumPy reference and the CUDA kernels.
"""
import warnings

import torch

from minibn.nn import functional
from minibn.nn.batch_renorm import BatchRenorm2d, renorm_schedule
from minibn.nn.function import BatchNormFunction
from minibn.nn.ghost import GhostBatchNorm, ghost_batch_norm
from minibn.nn.group_norm import GroupNorm, InstanceNorm2d, LayerNorm
from minibn.nn.inference import fold_batchnorm, precise_bn
from minibn.nn.modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from minibn.nn.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm, run_distributed

__all__ = [
    "BatchNormFunction",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchRenorm2d",
    "GhostBatchNorm",
    "GroupNorm",
    "InstanceNorm2d",
    "LayerNorm",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "fold_batchnorm",
    "functional",
    "ghost_batch_norm",
    "precise_bn",
    "renorm_schedule",
    "run_distributed",
]

# Under torch.jit.trace sizes are tensors, so batch_norm's shape checks (like torch's own) become
# constants of the trace, and each one warns. torch silences that warning for its own modules;
# minibn does the same for its batch norm, so that tracing a model with either reads the same.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                        module=r"minibn\.(nn|conventions)")

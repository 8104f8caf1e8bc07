"""The torch MLP of the Santurkar and Wu & Johnson experiments (E2, E3, E6), and its layers.

``MLP(sizes, norm, ...)``: hidden layers Linear -> normalization -> ReLU, a Linear output.
The normalizations are plain functions over the batch axis 0 (the channel axis is 1):
``batch_normalize``, ``lp_normalize`` (Santurkar's ℓp), ``layer_normalize``, and ghost BN
from ``minibn.nn.ghost``; ``santurkar_noise`` draws noisy BN's perturbation. Parameters are plain
tensors so that experiments can move them by hand (ICS, landscape probes). Training pieces:
``torch_train``.
"""
from __future__ import annotations

import math

import torch

from minibn.nn.ghost import ghost_batch_norm

__all__ = ["EPS", "LABELS", "MLP", "VARIANTS", "batch_normalize", "layer_normalize",
           "lp_normalize", "santurkar_noise"]

VARIANTS = ("std", "bn", "noisy_bn", "l1", "l2", "linf")
LABELS = {"std": "standard", "bn": "BatchNorm", "noisy_bn": "noisy BatchNorm",
          "l1": "ℓ1 norm", "l2": "ℓ2 norm", "linf": "ℓ∞ norm", "ghost": "ghost BN", "ln": "LayerNorm"}
EPS = 1e-5

def lp_normalize(h, p, eps=EPS):
    """Santurkar's ℓp normalization of ``h`` (N, D) over the batch: ``(h - mean) / norm``.

    ``norm`` is the average ℓp norm of each unit over the batch, taken *before* mean-shifting:
    ``mean(|h|**p)**(1/p)`` for p = 1, 2 (p = 2 is the root mean square), ``max|h|`` for p = inf.
    """
    centred = h - h.mean(0)
    if math.isinf(p):
        norm = h.abs().amax(0)
    else:
        norm = h.abs().pow(p).mean(0).pow(1.0 / p)
    return centred / (norm + eps)


def batch_normalize(h, eps=EPS):
    """BatchNorm without the affine part: biased batch variance, eps inside the square root."""
    mean = h.mean(0)
    var = h.var(0, unbiased=False)
    return (h - mean) / torch.sqrt(var + eps)


def layer_normalize(h, eps=EPS):
    mean = h.mean(1, keepdim=True)
    var = h.var(1, unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + eps)


def santurkar_noise(shape, generator):
    """``(scale, shift)`` for one layer and step: a <- scale * a + shift (Santurkar et al.).

    Per layer and step mu ~ U(-0.5, 0.5), sigma ~ U(1, 1.25); per element
    shift ~ U(mu - 0.1, mu + 0.1), scale ~ N(sigma, 0.1).
    """
    mu = torch.rand((), generator=generator) - 0.5
    sigma = 1.0 + 0.25 * torch.rand((), generator=generator)
    shift = mu + 0.2 * (torch.rand(shape, generator=generator) - 0.5)
    scale = sigma + 0.1 * torch.randn(shape, generator=generator)
    return scale, shift


class MLP:
    """``depth`` hidden layers of ``width`` units, ReLU (or linear), one normalization per layer.

    norm: "std" (no normalization, biases), "bn", "noisy_bn", "l1", "l2", "linf", "ghost"
    (BN over groups of ``group`` samples) or "ln" (LayerNorm). Normalized layers drop the
    bias (beta replaces it). Parameters are plain tensors so that experiments can move them by
    hand (ICS, landscape probes): ``layers[i]`` lists layer i's tensors, the output layer last.
    """

    def __init__(self, sizes, norm="std", init="lecun", activation="relu", group=None,
                 generator=None, dtype=torch.float32):
        if norm not in VARIANTS + ("ghost", "ln"):
            raise ValueError(f"unknown norm {norm!r}")
        if norm == "ghost" and not group:
            raise ValueError("norm='ghost' needs a group size")
        self.norm, self.group, self.activation = norm, group, activation
        gain = {"lecun": 1.0, "he": 2.0}[init]
        self.layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = torch.randn(fan_in, fan_out, generator=generator, dtype=dtype) * math.sqrt(gain / fan_in)
            hidden = i < len(sizes) - 2
            if hidden and norm != "std":
                tensors = [w, torch.ones(fan_out, dtype=dtype), torch.zeros(fan_out, dtype=dtype)]
            else:
                tensors = [w, torch.zeros(fan_out, dtype=dtype)]
            self.layers.append([t.requires_grad_() for t in tensors])

    @property
    def params(self):
        return [t for layer in self.layers for t in layer]

    def normalize(self, h, i, stats=None):
        """Layer i's normalization of its pre-activation ``h`` (before gamma and beta)."""
        if stats is not None:  # inference with population statistics (mean, var) of layer i
            mean, var = stats[i]
            return (h - mean) / torch.sqrt(var + EPS)
        if self.norm in ("bn", "noisy_bn"):
            return batch_normalize(h)
        if self.norm == "ghost":
            return ghost_batch_norm(h, min(self.group, h.shape[0]), eps=EPS)
        if self.norm == "ln":
            return layer_normalize(h)
        return lp_normalize(h, {"l1": 1, "l2": 2, "linf": math.inf}[self.norm])

    def forward(self, x, *, noise=None, stats=None, taps=None, layers=None):
        """Logits for ``x`` (N, D_in).

        noise: a torch.Generator drawing Santurkar's noise after each BN (noisy_bn in training);
            None means no noise (evaluation).
        stats: per hidden layer (mean, var) to normalize with instead of batch statistics.
        taps: a list that receives, per hidden layer, the un-normalized pre-activation ``h``
            (for batch statistics) and the input of the nonlinearity ``a``, as (h, a) pairs.
        layers: parameters to use instead of ``self.layers``, in the same layout (ICS moves
            some layers without touching the model).
        """
        for i, layer in enumerate(self.layers if layers is None else layers):
            h = x @ layer[0]
            if len(layer) == 2:
                a = h + layer[1]
            else:
                a = self.normalize(h, i, stats) * layer[1] + layer[2]
                if noise is not None and self.norm == "noisy_bn":
                    scale, shift = santurkar_noise(a.shape, noise)
                    a = scale * a + shift
            if i == len(self.layers) - 1:
                return a
            if taps is not None:
                taps.append((h, a))
            x = torch.relu(a) if self.activation == "relu" else a

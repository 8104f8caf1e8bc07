"""The NumPy MLP of the experiments: layers, the net and its loss (training: ``numpy_train``).

- ``make_rng(seed)``: the one NumPy Generator an experiment draws everything from.
- Layers with ``forward(x, train)``, ``backward(dout)``, ``params()``/``grads()`` (lists of
  arrays, that ``numpy_train.sgd_step`` updates in place): ``Linear``, ``BatchNorm``,
  ``Sigmoid``, ``ReLU``.
- ``MLP(sizes, activation, batchnorm, init, rng)``: Linear -> [BatchNorm] -> activation per
  hidden layer, a Linear output layer. With BN the hidden Linear layers have no bias (the mean
  subtraction cancels it; beta replaces it, paper Sec. 3.2). ``forward`` records every hidden
  activation's input in ``model.pre_activations``.
- ``softmax_cross_entropy(logits, y) -> (loss, dlogits)``.

Everything is NumPy float32 on purpose: the BN layer is ``minibn.functional``, the code the
course builds in lessons 01-03, and one step of a 784-100-100-100-10 net takes about a
millisecond on one core. E1 and E5 train it; lesson 05's check and widget reuse it.
"""
from __future__ import annotations

import math

import numpy as np

from minibn import functional as F

__all__ = ["BatchNorm", "Linear", "MLP", "ReLU", "Sigmoid", "init_std", "make_rng",
           "softmax_cross_entropy"]

DTYPE = np.float32


def make_rng(seed):
    return np.random.default_rng(seed)


def init_std(init, fan_in):
    """Weight std for an init name or a number: "lecun" 1/sqrt(fan_in), "he" sqrt(2/fan_in)."""
    if init == "lecun":
        return 1.0 / math.sqrt(fan_in)
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if isinstance(init, (int, float)) and init > 0:
        return float(init)
    raise ValueError(f"init must be 'lecun', 'he' or a positive std, got {init!r}")


class Linear:
    """y = x @ W + b; x ``(N, fan_in)``, W ``(fan_in, fan_out)``; caches x for backward."""

    def __init__(self, fan_in, fan_out, std, rng, bias=True):
        self.W = (rng.standard_normal((fan_in, fan_out)) * std).astype(DTYPE)
        self.b = np.zeros(fan_out, DTYPE) if bias else None
        self.dW = np.zeros_like(self.W)
        self.db = None if self.b is None else np.zeros_like(self.b)

    def forward(self, x, train=True):
        self.x = x
        out = x @ self.W
        return out if self.b is None else out + self.b

    def backward(self, dout):
        self.dW[...] = self.x.T @ dout
        if self.b is not None:
            self.db[...] = dout.sum(axis=0)
        return dout @ self.W.T

    def params(self):
        return [self.W] if self.b is None else [self.W, self.b]

    def grads(self):
        return [self.dW] if self.b is None else [self.dW, self.db]


class BatchNorm:
    """Batch normalization over ``(N, C)``: batch statistics in training, running ones in eval.

    Training uses ``minibn.functional.batchnorm_forward``/``batchnorm_backward`` and updates
    the running mean and (unbiased) variance with torch's ``momentum`` convention. The cache
    of the last training forward pass is kept for backward.
    """

    def __init__(self, channels, eps=1e-5, momentum=0.1):
        self.gamma = np.ones(channels, DTYPE)
        self.beta = np.zeros(channels, DTYPE)
        self.dgamma = np.zeros_like(self.gamma)
        self.dbeta = np.zeros_like(self.beta)
        self.running_mean = np.zeros(channels, DTYPE)
        self.running_var = np.ones(channels, DTYPE)
        self.eps, self.momentum = eps, momentum

    def forward(self, x, train=True):
        if not train:
            self.cache = None  # an eval pass must not leave a stale cache for backward
            return F.batchnorm_inference(x, self.running_mean, self.running_var,
                                         self.gamma, self.beta, self.eps)
        out, self.cache = F.batchnorm_forward(x, self.gamma, self.beta, self.eps)
        F.update_running_stats(self.running_mean, self.running_var, x, self.momentum)
        return out

    def backward(self, dout):
        if getattr(self, "cache", None) is None:
            raise RuntimeError("BatchNorm.backward needs a training-mode forward pass first "
                               "(forward(x, train=True)): in eval mode BN uses fixed running "
                               "statistics and keeps nothing to differentiate through")
        dx, self.dgamma[...], self.dbeta[...] = F.batchnorm_backward(dout, self.cache)
        return dx

    def params(self):
        return [self.gamma, self.beta]

    def grads(self):
        return [self.dgamma, self.dbeta]


class Sigmoid:
    def forward(self, x, train=True):
        # exp of a large negative argument overflows harmlessly to inf (giving 0); silence it.
        with np.errstate(over="ignore"):
            self.out = 1.0 / (1.0 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return dout * self.out * (1.0 - self.out)

    def params(self):
        return []

    def grads(self):
        return []


class ReLU:
    def forward(self, x, train=True):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dout):
        return dout * self.mask

    def params(self):
        return []

    def grads(self):
        return []


_ACTIVATIONS = {"sigmoid": Sigmoid, "relu": ReLU}


class MLP:
    """A fully connected net: per hidden layer Linear -> [BatchNorm] -> activation; Linear out.

    sizes: e.g. ``[784, 100, 100, 100, 10]``.
    activation: ``"sigmoid"`` or ``"relu"``.
    batchnorm: add BN before every hidden activation (and drop those layers' biases).
    init: weight std for every layer: a number (e.g. 0.01, the "small Gaussian" of Figure 1),
        ``"lecun"`` or ``"he"``.
    """

    def __init__(self, sizes, activation="sigmoid", batchnorm=False, init="lecun", rng=None,
                 momentum=0.1):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        rng = make_rng(0) if rng is None else rng
        self.layers, self.hidden = [], []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            self.layers.append(Linear(fan_in, fan_out, init_std(init, fan_in), rng,
                                      bias=last or not batchnorm))
            if not last:
                if batchnorm:
                    self.layers.append(BatchNorm(fan_out, momentum=momentum))
                # the activation's input is what the layer before it outputs
                self.hidden.append(len(self.layers) - 1)
                self.layers.append(_ACTIVATIONS[activation]())
        self.pre_activations = []

    def forward(self, x, train=True):
        """Logits ``(N, classes)`` for ``x`` ``(N, sizes[0])``; eval mode uses running BN stats."""
        x = np.asarray(x, DTYPE)
        self.pre_activations = []
        for i, layer in enumerate(self.layers):
            x = layer.forward(x, train)
            if i in self.hidden:
                self.pre_activations.append(x)
        return x

    def backward(self, dlogits):
        d = dlogits
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return d

    def params(self):
        return [p for layer in self.layers for p in layer.params()]

    def grads(self):
        return [g for layer in self.layers for g in layer.grads()]

    def batchnorms(self):
        return [layer for layer in self.layers if isinstance(layer, BatchNorm)]


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of integer labels ``y`` ``(N,)``; returns (loss, dlogits ``(N, K)``)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -float(log_probs[np.arange(n), y].mean())
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), y] -= 1.0
    return loss, (dlogits / n).astype(logits.dtype, copy=False)

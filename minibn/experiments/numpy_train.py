"""Training the NumPy MLP (``numpy_mlp``): SGD, batches, evaluation, population statistics.

- ``sgd_step(params, grads, lr)``; ``minibatches(rng, n, batch_size)``; ``accuracy(model, x, y)``;
  ``set_population_stats(model, x)`` (PreciseBN from one large batch, Algorithm 2);
  ``steps_to(xs, ys, target)``; ``train(model, x, y, ...)``, the SGD loop with periodic
  evaluation and divergence detection.
"""
from __future__ import annotations

import math

import numpy as np

from minibn.conventions import unbiased_variance
from minibn.experiments.numpy_mlp import DTYPE, BatchNorm, softmax_cross_entropy
from minibn.experiments.progress import progress_bar

__all__ = ["accuracy", "minibatches", "set_population_stats", "sgd_step", "steps_to", "train"]


def sgd_step(params, grads, lr):
    """Plain SGD, in place: ``p -= lr * g`` for every array (torch's twin: ``torch_train``)."""
    for p, g in zip(params, grads):
        p -= lr * g


def minibatches(rng, n, batch_size):
    """Yield index arrays of ``batch_size`` forever, reshuffling ``range(n)`` every epoch."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def accuracy(model, x, y, train=False):
    """Fraction of ``x`` classified as ``y``; eval mode (running/population BN stats) by default."""
    return float((model.forward(x, train=train).argmax(axis=1) == y).mean())


def set_population_stats(model, x):
    """Set every BN layer's running stats to the statistics of one large batch ``x`` (PreciseBN).

    Paper Algorithm 2 with one big batch: the mean, and the unbiased (m/(m-1)) variance, of each
    BN layer's input when ``x`` goes through the net with the current weights. Returns ``model``.
    """
    h = np.asarray(x, DTYPE)
    m = len(h)
    for layer in model.layers:
        if isinstance(layer, BatchNorm):
            layer.running_mean[...] = h.mean(axis=0)
            layer.running_var[...] = unbiased_variance(h.var(axis=0), m)
        h = layer.forward(h, train=False)
    return model


def steps_to(xs, ys, target):
    """The first x at which y >= target, or None if it never does."""
    for x, y in zip(xs, ys):
        if y >= target:
            return x
    return None


def _forward_loss(model, x, y):
    try:
        logits = model.forward(x)
    except ValueError:
        # minibn's BN refuses NaN input: if the weights went non-finite, the run diverged.
        if all(np.isfinite(p).all() for p in model.params()):
            raise
        return math.nan, None
    return softmax_cross_entropy(logits, y)


def train(model, x, y, *, steps, lr, batch_size, rng, eval_every=0, evaluate=None,
          progress=False, desc="train"):
    """Train ``model`` with plain SGD on minibatches of ``(x, y)`` drawn with ``rng``.

    lr: a number, or a function of the step (1-based) returning one.
    evaluate: called as ``evaluate(model, step)`` after every ``eval_every`` steps (and at
        step 0 if ``eval_every``); its return values are collected.
    Stops early when the loss becomes NaN or inf (the run diverged).

    Returns a dict: ``loss`` (one float per step taken), ``eval_steps``, ``evals`` (what
    ``evaluate`` returned) and ``diverged_at`` (the step whose loss was not finite, or None).
    """
    history = {"loss": [], "eval_steps": [], "evals": [], "diverged_at": None}
    schedule = lr if callable(lr) else (lambda step: lr)
    batches = minibatches(rng, len(x), batch_size)
    bar = progress_bar(steps, desc, progress)

    def run_eval(step):
        history["eval_steps"].append(step)
        history["evals"].append(evaluate(model, step))

    if eval_every and evaluate is not None:
        run_eval(0)
    # Overflow in a diverging net is expected and detected below; don't spray warnings.
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(1, steps + 1):
            idx = next(batches)
            loss, dlogits = _forward_loss(model, x[idx], y[idx])
            history["loss"].append(loss)
            if not math.isfinite(loss):
                history["diverged_at"] = step
                break
            model.backward(dlogits)
            sgd_step(model.params(), model.grads(), schedule(step))
            bar.update()
            if eval_every and evaluate is not None and step % eval_every == 0:
                run_eval(step)
    bar.close()
    return history

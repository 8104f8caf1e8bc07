"""Internal covariate shift as Santurkar et al. 2018 define it (Definition 2.1), for any stack.

For layer i at a step: G is the gradient of the loss w.r.t. W_i; G' is the same gradient, on
the same batch, after only the *preceding* layers 0..i-1 took their SGD step. If BN removed
ICS, G' would stay close to G. E3 measures it in the torch MLP, E4 in the NumPy deep linear
network, with this one function.
"""
from __future__ import annotations


def ics(grads_of, layers, i, lr, grads=None):
    """``(||G - G'||, ||G - G'|| / ||G||, cos(G, G'))`` for W_i = ``layers[i][0]``.

    layers: per layer, a list of parameter arrays or tensors (W first).
    grads_of(layers): the loss gradients on one fixed batch at ``layers``, nested the same way.
    grads: ``grads_of(layers)`` if already computed. Nothing is changed in place: the moved
    layers are new arrays ``p - lr * g``.
    """
    grads = grads_of(layers) if grads is None else grads
    moved = [[p - lr * g for p, g in zip(ps, gs)] if j < i else ps
             for j, (ps, gs) in enumerate(zip(layers, grads))]
    g, g_after = grads[i][0], grads_of(moved)[i][0]
    dist = _norm(g - g_after)
    norm = _norm(g)
    cos = float((g * g_after).sum()) / (norm * _norm(g_after) + 1e-30)
    return dist, dist / (norm + 1e-30), cos


def _norm(a):
    return float((a * a).sum()) ** 0.5

"""Definition 2.1 (minibn.experiments.ics) on cases with a hand-derived answer, in both stacks."""
import numpy as np
import pytest
import torch

from minibn.experiments import e4_deep_linear as e4
from minibn.experiments.ics import ics


def _linear_problem(seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((5, 3)), rng.standard_normal((5, 2)),
            rng.standard_normal((3, 4)), rng.standard_normal((4, 2)))


def _expected(x, y, w1, w2, lr):
    # L = 0.5 ||x W1 W2 - y||^2: dL/dW2 = (x W1)^T r, dL/dW1 = x^T r W2^T, r = x W1 W2 - y
    r = x @ w1 @ w2 - y
    g2 = (x @ w1).T @ r
    w1_moved = w1 - lr * (x.T @ r @ w2.T)
    g2_after = (x @ w1_moved).T @ (x @ w1_moved @ w2 - y)
    dist = np.linalg.norm(g2 - g2_after)
    cos = (g2 * g2_after).sum() / (np.linalg.norm(g2) * np.linalg.norm(g2_after))
    return dist, dist / np.linalg.norm(g2), cos


def test_numpy_layers_match_the_hand_derived_gradients():
    x, y, w1, w2 = _linear_problem(0)

    def grads_of(layers):
        (a,), (b,) = layers
        r = x @ a @ b - y
        return [[x.T @ r @ b.T], [(x @ a).T @ r]]

    layers = [[w1.copy()], [w2.copy()]]
    got = ics(grads_of, layers, 1, 0.05)
    assert got == pytest.approx(_expected(x, y, w1, w2, 0.05), rel=1e-10)
    np.testing.assert_array_equal(layers[0][0], w1)  # nothing moved in place


def test_torch_layers_through_autograd_match_the_hand_derived_gradients():
    x, y, w1, w2 = _linear_problem(1)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    layers = [[torch.from_numpy(w1.copy()).requires_grad_()],
              [torch.from_numpy(w2.copy()).requires_grad_()]]

    def grads_of(ls):
        loss = 0.5 * ((tx @ ls[0][0] @ ls[1][0] - ty) ** 2).sum()
        g1, g2 = torch.autograd.grad(loss, [ls[0][0], ls[1][0]])
        return [[g1], [g2]]

    assert ics(grads_of, layers, 1, 0.05) == pytest.approx(_expected(x, y, w1, w2, 0.05), rel=1e-10)
    assert torch.equal(layers[0][0].detach(), torch.from_numpy(w1))


def test_first_layer_or_a_zero_step_means_no_shift():
    rng = np.random.default_rng(0)
    model = e4.DeepLinear(4, 3, True, rng)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 3))

    def grads_of(layers):
        return model.loss_and_grads(x, y, layers)[1]

    for i, lr in ((0, 0.1), (2, 0.0)):
        dist, rel, cos = ics(grads_of, model.layers, i, lr)
        assert dist == 0.0 and rel == 0.0 and cos == pytest.approx(1.0)


def test_a_shift_in_the_bn_net_is_measured_and_nothing_changes():
    rng = np.random.default_rng(3)
    model = e4.DeepLinear(4, 3, True, rng)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 3))
    before = [[a.copy() for a in p] for p in model.layers]
    dist, rel, cos = ics(lambda layers: model.loss_and_grads(x, y, layers)[1], model.layers, 2, 0.5)
    assert dist > 0 and rel > 1e-3 and -1 <= cos <= 1
    for p, q in zip(model.layers, before):
        for a, b in zip(p, q):
            np.testing.assert_array_equal(a, b)

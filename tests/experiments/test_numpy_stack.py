"""The NumPy MLP stack (numpy_mlp, numpy_train): gradients, population statistics, training."""
import numpy as np
import pytest

from minibn.experiments import numpy_mlp as C
from minibn.experiments import numpy_train as T
from minibn.gradcheck import numerical_gradient, rel_error


@pytest.mark.parametrize("activation,batchnorm", [("sigmoid", True), ("relu", False), ("relu", True)])
def test_mlp_backward_matches_finite_differences(activation, batchnorm, monkeypatch):
    monkeypatch.setattr(C, "DTYPE", np.float64)
    monkeypatch.setattr(T, "DTYPE", np.float64)
    rng = np.random.default_rng(0)
    model = C.MLP([5, 4, 3, 3], activation, batchnorm, init=0.7, rng=rng)
    x = rng.normal(size=(6, 5))
    y = rng.integers(0, 3, 6)
    _, dlogits = C.softmax_cross_entropy(model.forward(x), y)
    model.backward(dlogits)
    for p, g in zip(model.params(), model.grads()):
        def loss():
            return C.softmax_cross_entropy(model.forward(x), y)[0]
        num = numerical_gradient(loss, p)
        assert rel_error(num, g) < 1e-6


def test_batchnorm_mlp_drops_hidden_biases():
    model = C.MLP([4, 3, 3, 2], "relu", batchnorm=True, rng=np.random.default_rng(0))
    linears = [layer for layer in model.layers if isinstance(layer, C.Linear)]
    assert [lin.b is None for lin in linears] == [True, True, False]
    assert len(model.batchnorms()) == 2


def test_set_population_stats_uses_the_unbiased_variance_of_each_bn_input():
    rng = np.random.default_rng(1)
    model = C.MLP([3, 4, 2], "relu", batchnorm=True, rng=rng)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    T.set_population_stats(model, x)
    h = x @ model.layers[0].W
    bn = model.batchnorms()[0]
    np.testing.assert_allclose(bn.running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, h.var(0, ddof=1), rtol=1e-5)


def test_train_reduces_the_loss_and_detects_divergence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    model = C.MLP([10, 16, 2], "relu", rng=rng)
    hist = T.train(model, x, y, steps=200, lr=0.1, batch_size=20, rng=rng)
    assert hist["diverged_at"] is None and np.mean(hist["loss"][-20:]) < 0.5 * hist["loss"][0]
    boom = C.MLP([10, 16, 16, 2], "relu", init="he", rng=rng)
    hist = T.train(boom, x * 100, y, steps=100, lr=1e4, batch_size=20, rng=rng)
    assert hist["diverged_at"] is not None and len(hist["loss"]) == hist["diverged_at"]


def test_steps_to():
    assert T.steps_to([0, 10, 20], [0.1, 0.9, 0.95], 0.9) == 10
    assert T.steps_to([0, 10], [0.1, 0.2], 0.9) is None

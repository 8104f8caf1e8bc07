"""Central differences and rel_error: the tools every gradient check in the course stands on."""
import numpy as np
import pytest

from minibn.gradcheck import numerical_gradient, numerical_gradient_array, rel_error


def test_numerical_gradient_of_a_known_function(rng):
    x = rng.normal(size=(3, 4))
    grad = numerical_gradient(lambda: np.sum(np.sin(x) * x), x)
    np.testing.assert_allclose(grad, np.cos(x) * x + np.sin(x), rtol=1e-8, atol=1e-10)


def test_numerical_gradient_restores_x(rng):
    x = rng.normal(size=(2, 3))
    before = x.copy()
    numerical_gradient(lambda: float(np.sum(x**3)), x)
    np.testing.assert_array_equal(x, before)


def test_vector_jacobian_product_of_a_matrix_product(rng):
    w = rng.normal(size=(4, 3))
    x = rng.normal(size=(5, 4))
    dout = rng.normal(size=(5, 3))
    np.testing.assert_allclose(numerical_gradient_array(lambda: x @ w, x, dout), dout @ w.T,
                               rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(numerical_gradient_array(lambda: x @ w, w, dout), x.T @ dout,
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("bad", [np.ones(3, np.float32), np.ones(3, np.int64), [1.0, 2.0]],
                         ids=["float32", "int64", "list"])
def test_requires_float64_arrays(bad):
    with pytest.raises(TypeError, match="float64 NumPy array"):
        numerical_gradient(lambda: 0.0, bad)
    with pytest.raises(TypeError, match="float64 NumPy array"):
        numerical_gradient_array(lambda: np.zeros(3), np.zeros(3), bad)


def test_rejects_an_x_it_cannot_perturb_in_place():
    x = np.zeros((3, 4)).T  # flattening it would copy, and the copy's nudges wouldn't reach f
    with pytest.raises(ValueError, match="contiguous"):
        numerical_gradient(lambda: float(x.sum()), x)


def test_strided_view_that_flattens_without_a_copy_works(rng):
    base = rng.normal(size=(4, 4))
    x = base[:, ::2]  # a uniform stride: reshape(-1) is still a view
    np.testing.assert_allclose(numerical_gradient(lambda: np.sum(x**2), x), 2 * x, rtol=1e-8)


def test_rel_error():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert rel_error(1.0, 3.0) == pytest.approx(0.5)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0  # no 0/0
    assert rel_error(np.array([0.0, 1e-9]), np.array([0.0, 0.0])) == pytest.approx(1e-9 / 1e-8)
    assert rel_error(np.empty(0), np.empty(0)) == 0.0
    assert isinstance(rel_error(np.ones(2), np.ones(2)), float)
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(np.ones(2), np.ones(3))

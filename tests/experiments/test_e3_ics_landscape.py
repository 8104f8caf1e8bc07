"""E3: the gradient probe on a case with a known answer, and the calibrated L1, I1."""
import math

import pytest
import torch

from minibn.experiments import e3_ics_landscape as e3

from .seeds import SEEDS


def test_probe_on_a_quadratic_gives_the_exact_losses_and_beta():
    # L = 0.5 * a * |theta|^2: grad = a theta; at theta - eta g the gradient changes by a * eta |g|
    a, lr = 3.0, 0.1
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    start = theta.detach().clone()
    p = e3.probe_gradient_direction(lambda: 0.5 * a * (theta ** 2).sum(), [theta], lr, (0.5, 1.0, 2.0))
    g = a * start
    for m, loss, change, beta in zip((0.5, 1.0, 2.0), p["losses"], p["grad_changes"], p["beta"]):
        moved = start - m * lr * g
        assert loss == pytest.approx(float(0.5 * a * (moved ** 2).sum()))
        assert change == pytest.approx(a * m * lr * float(g.norm()))
        assert beta == pytest.approx(a)  # the quadratic's smoothness constant
    assert torch.equal(theta.detach(), start)


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def result(request):
    return e3.run(e3.config(seed=request.param), progress=False)


@pytest.mark.slow
def test_claims_l1_and_i1_hold_and_the_seed_dependent_ones_are_reported(result):
    by_label = {c.label: c for c in result.claims}
    for label in ("L1", "I1"):
        c = by_label[label]
        assert c.passed, f"{label}: {c.ours} (criterion {c.criterion})"
    for label in ("L2", "L3", "L4", "I2"):
        assert by_label[label].passed is None, label


@pytest.mark.slow
def test_probes_are_finite_and_plots_draw(result):
    import matplotlib

    matplotlib.use("Agg")
    for key, value in result.summary.items():
        assert math.isfinite(value), key
    assert len(e3.plot(result)) == 2

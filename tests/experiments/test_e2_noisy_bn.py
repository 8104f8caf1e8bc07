"""E2 (noisy BN, ℓp normalization): the layers, the noise law, and criteria S1-S4."""
import math

import numpy as np
import pytest
import torch

from minibn.experiments import e2_noisy_bn as e2
from minibn.experiments import torch_mlp, torch_train

from .seeds import SEEDS
ASSERTED = ("S1", "S2", "S3", "S4a", "S4b")


def test_lp_normalize_centres_and_divides_by_the_average_lp_norm_before_centring():
    h = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0], [5.0, 2.0]], dtype=torch.float64)
    mean = h.mean(0)
    for p, norm in ((1, h.abs().mean(0)), (2, h.pow(2).mean(0).sqrt()), (math.inf, h.abs().amax(0))):
        out = torch_mlp.lp_normalize(h, p, eps=0.0)
        torch.testing.assert_close(out, (h - mean) / norm)
        torch.testing.assert_close(out.mean(0), torch.zeros(2, dtype=torch.float64))


def test_santurkar_noise_follows_the_law_and_changes_every_call():
    gen = torch.Generator().manual_seed(0)
    draws = [torch_mlp.santurkar_noise((4000, 1), gen) for _ in range(200)]
    shift_means = np.array([float(shift.mean()) for _, shift in draws])
    scale_means = np.array([float(scale.mean()) for scale, _ in draws])
    # per-step means: mu ~ U(-0.5, 0.5) and sigma ~ U(1, 1.25), so they spread over those ranges
    assert shift_means.min() > -0.51 and shift_means.max() < 0.51 and shift_means.std() > 0.2
    assert scale_means.min() > 0.98 and scale_means.max() < 1.27 and scale_means.std() > 0.05
    scale, shift = draws[0]
    assert 0.19 < float(shift.max() - shift.min()) <= 0.2 + 1e-6     # U(mu - 0.1, mu + 0.1)
    assert abs(float(scale.std()) - 0.1) < 0.01                    # N(sigma, 0.1)


def test_noise_is_applied_only_with_a_generator_and_only_to_noisy_bn():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 784)
    noisy = torch_mlp.MLP([784, 20, 20, 10], norm="noisy_bn", generator=gen)
    with torch.no_grad():
        clean = noisy.forward(x)
        torch.testing.assert_close(clean, noisy.forward(x))
        assert not torch.allclose(clean, noisy.forward(x, noise=torch.Generator().manual_seed(1)))


def test_steps_below_counts_the_running_mean_window():
    losses = [1.0] * 100 + [0.0] * 100
    # the running mean of 50 drops below 0.3 once 36 of the last 50 losses are 0
    assert torch_train.steps_below(losses, 0.3, window=50) == 136
    assert torch_train.steps_below(losses, -1.0) is None


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def result(request):
    return e2.run(e2.config(seed=request.param), progress=False)


@pytest.mark.slow
def test_asserted_claims_hold_and_linf_is_reported(result):
    by_label = {c.label: c for c in result.claims}
    for label in ASSERTED:
        c = by_label[label]
        assert c.passed, f"{label}: {c.ours} (criterion {c.criterion})"
    assert by_label["S4c"].passed is None


@pytest.mark.slow
def test_result_round_trips_through_json_and_plots(result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    figs = e2.plot(result)
    paths = result.save(tmp_path, figs)
    assert all(p.exists() for p in map(__import__("pathlib").Path, paths))
    back = type(result).from_dict(__import__("json").load(open(paths[0])))
    assert back.summary == pytest.approx(result.summary, nan_ok=True)

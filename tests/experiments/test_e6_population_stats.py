"""E6 (population statistics): the estimators (m/(m-1), PreciseBN pooling, EMA) and R1-R3."""
import json
import pathlib

import numpy as np
import pytest
import torch

from minibn import nn as mnn
from minibn.experiments import e6_population_stats as e6
from minibn.experiments.e2_noisy_bn import MLP
from minibn.experiments.result import Result

SEEDS = (0, 1, 2)


def _batch_stats(x, m):
    moments = [e6.batch_moments(x[i:i + m]) for i in range(0, len(x), m)]
    return [mu for mu, _ in moments], [v for _, v in moments]


def test_averaged_biased_batch_variances_underestimate_and_m_over_m_minus_1_fixes_it():
    x = 3.0 + 2.0 * torch.randn(100_000, 1, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
    means, variances = _batch_stats(x, 4)
    biased = float(torch.stack(variances).mean())
    mean, var = e6.bessel_estimate(means, variances, 4)
    assert biased == pytest.approx(3.0, abs=0.06)       # (m-1)/m * 4
    assert float(var) == pytest.approx(4.0, abs=0.08)
    assert float(mean) == pytest.approx(3.0, abs=0.03)
    with pytest.raises(ValueError, match="at least 2"):
        e6.bessel_estimate(means, variances, 1)


def test_pooled_estimate_equals_the_full_data_statistics_on_equal_disjoint_batches():
    x = torch.randn(600, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1
    means, variances = _batch_stats(x, 20)
    mean, var = e6.pooled_estimate(means, variances, [20] * 30)
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, x.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
    # Bessel per batch is not the same thing: it is off by the spread of the batch means
    assert not torch.allclose(e6.bessel_estimate(means, variances, 20)[1], var, rtol=1e-6)


def test_pooled_estimate_weights_each_sample_once_with_unequal_batches():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    parts = [x[:10], x[10:15], x[15:]]
    mean, var = e6.pooled_estimate([p.mean(0) for p in parts],
                                   [p.var(0, unbiased=False) for p in parts], [10, 5, 35])
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(var, x.var(0, unbiased=True))


def test_pooled_estimate_agrees_with_minibn_nn_precise_bn():
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    bn = mnn.BatchNorm1d(6).double()
    mnn.precise_bn(torch.nn.Sequential(bn), [x[i:i + 40] for i in range(0, 400, 40)])
    mean, var = e6.pooled_estimate(*_batch_stats(x, 40), [40] * 10)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


def test_ema_tracks_like_torch_batchnorm_running_stats():
    gen = torch.Generator().manual_seed(4)
    bn = torch.nn.BatchNorm1d(3, momentum=0.1).double()
    ema = e6.EMA(0.9, [3])
    for _ in range(5):
        x = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 2 + 1
        bn(x)
        ema.update([e6.batch_moments(x)], 8)
    torch.testing.assert_close(ema.stats[0][0], bn.running_mean)
    torch.testing.assert_close(ema.stats[0][1], bn.running_var)


def test_precise_bn_over_the_whole_set_gives_the_first_layer_its_exact_statistics():
    gen = torch.Generator().manual_seed(5)
    model = MLP([12, 7, 7, 3], norm="bn", init="he", generator=gen)
    x = torch.randn(240, 12, generator=gen)
    stats = e6.precise_bn(model, x, 30, gen)
    h = (x @ model.layers[0][0]).detach().double()
    assert len(stats) == 2
    torch.testing.assert_close(stats[0][0], h.mean(0))
    torch.testing.assert_close(stats[0][1], h.var(0, unbiased=True))


def test_batch_statistics_at_inference_depend_on_batch_composition():
    gen = torch.Generator().manual_seed(6)
    model = MLP([4, 8, 2], norm="bn", init="he", generator=gen)
    x = torch.randn(40, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    population = e6.precise_bn(model, x, 40, gen)
    # population statistics do not care how the set is cut into batches
    assert e6.accuracy(model, x, y, population) == e6.accuracy(model, x.flip(0), y.flip(0), population)
    order = torch.argsort(y)
    assert e6.accuracy(model, x[order], y[order], batch_size=20) != pytest.approx(
        e6.accuracy(model, x, y, population))


def test_r3_gap_is_mini_batch_minus_population_error_for_g_at_least_4():
    s = {"r3/2/train_batch": 0.8, "r3/2/train_pop": 0.7, "r3/4/train_batch": 0.2,
         "r3/4/train_pop": 0.05, "r3/8/train_batch": 0.06, "r3/8/train_pop": 0.0}
    assert e6.r3_gaps(s, [2, 4, 8]) == pytest.approx({4: 0.15, 8: 0.06})


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def result(request):
    return e6.run(fast=True, seed=request.param, progress=False)


def _claim(result, start):
    return next(c for c in result.claims if c.criterion.startswith(start))


@pytest.mark.slow
@pytest.mark.parametrize("criterion", [
    "PreciseBN within 1 point",          # R1a
    "EMA(0.999) >= 5 points below",      # R1b
    "sorted batch-stat accuracy < 0.5",  # R2
    "the gap shrinks monotonically",     # R3a
    "G=2 val error > 3x LayerNorm",      # R3b
])
def test_robust_criteria_hold(result, criterion):
    c = _claim(result, criterion)
    assert c.passed, f"{c.claim}: {c.ours}"


@pytest.mark.slow
def test_result_saves_plots_and_round_trips(result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = result.save(tmp_path, e6.plot(result))
    plt.close("all")
    assert len(paths) == 2 and all(pathlib.Path(p).stat().st_size > 0 for p in paths)
    back = Result.from_dict(json.load(open(paths[0])))
    assert back.summary == pytest.approx(result.summary)
    assert np.isfinite(list(result.summary.values())).all()

"""E6 (population statistics): the estimators (m/(m-1), PreciseBN pooling, EMA) and R1-R3."""
import json
import pathlib

import numpy as np
import pytest
import torch

from minibn.experiments import e6_population_stats as e6
from minibn.experiments import torch_train
from minibn.experiments.torch_mlp import MLP
from minibn.experiments.result import Result

from .seeds import SEEDS


def _batch_stats(x, m):
    moments = [torch_train.batch_moments(x[i:i + m]) for i in range(0, len(x), m)]
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


def test_ema_tracks_like_torch_batchnorm_running_stats():
    gen = torch.Generator().manual_seed(4)
    bn = torch.nn.BatchNorm1d(3, momentum=0.1).double()
    ema = e6.EMA(0.9, [3])
    for _ in range(5):
        x = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 2 + 1
        bn(x)
        ema.update([torch_train.batch_moments(x)], 8)
    torch.testing.assert_close(ema.stats[0][0], bn.running_mean)
    torch.testing.assert_close(ema.stats[0][1], bn.running_var)


def test_precise_bn_over_the_whole_set_gives_the_first_layer_its_exact_statistics():
    gen = torch.Generator().manual_seed(5)
    model = MLP([12, 7, 7, 3], norm="bn", init="he", generator=gen)
    x = torch.randn(240, 12, generator=gen)
    stats = torch_train.precise_bn(model, x, 30, gen)
    h = (x @ model.layers[0][0]).detach().double()
    assert len(stats) == 2
    torch.testing.assert_close(stats[0][0], h.mean(0))
    torch.testing.assert_close(stats[0][1], h.var(0, unbiased=True))


def test_batch_statistics_at_inference_depend_on_batch_composition():
    gen = torch.Generator().manual_seed(6)
    model = MLP([4, 8, 2], norm="bn", init="he", generator=gen)
    x = torch.randn(40, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    population = torch_train.precise_bn(model, x, 40, gen)
    # population statistics do not care how the set is cut into batches
    assert torch_train.accuracy(model, x, y, population) == torch_train.accuracy(model, x.flip(0), y.flip(0), population)
    order = torch.argsort(y)
    assert torch_train.accuracy(model, x[order], y[order], batch_size=20) != pytest.approx(
        torch_train.accuracy(model, x, y, population))


def test_r3_gap_is_mini_batch_minus_population_error_for_g_at_least_4():
    s = {"r3/2/train_batch": 0.8, "r3/2/train_pop": 0.7, "r3/4/train_batch": 0.2,
         "r3/4/train_pop": 0.05, "r3/8/train_batch": 0.06, "r3/8/train_pop": 0.0}
    assert e6.r3_gaps(s, [2, 4, 8]) == pytest.approx({4: 0.15, 8: 0.06})


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def result(request):
    return e6.run(e6.config(seed=request.param), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["R1a", "R1b", "R2", "R3a", "R3b"])
def test_asserted_criteria_hold(result, label):
    c = next(c for c in result.claims if c.label == label)
    assert c.passed, f"{c.claim}: {c.ours} (criterion {c.criterion})"


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

"""E4 (deep linear network): gradients, BN's scale invariance, divergence, and D1/D2."""
import json
import math
import pathlib

import numpy as np
import pytest

from minibn.experiments import e4_deep_linear as e4
from minibn.experiments.result import Result
from minibn.gradcheck import numerical_gradient

from .seeds import SEEDS


def _small(batchnorm, seed=0, depth=4, width=3, n=16):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, width)), rng.standard_normal((n, width))
    return e4.DeepLinear(depth, width, batchnorm, rng), x, y


def test_make_problem_is_a_seeded_linear_map():
    x, y, A = e4.make_problem(3, n=50, dim=4)
    assert x.shape == y.shape == (50, 4) and A.shape == (4, 4)
    np.testing.assert_allclose(y, x @ A.T)
    np.testing.assert_array_equal(e4.make_problem(3, n=50, dim=4)[2], A)
    assert not np.array_equal(e4.make_problem(4, n=50, dim=4)[2], A)


def test_bn_goes_after_every_layer_but_the_last_and_both_nets_share_weights():
    std = e4.DeepLinear(5, 4, False, np.random.default_rng(7))
    bn = e4.DeepLinear(5, 4, True, np.random.default_rng(7))
    assert [len(p) for p in std.layers] == [1] * 5
    assert [len(p) for p in bn.layers] == [3, 3, 3, 3, 1]
    for p, q in zip(std.layers, bn.layers):
        np.testing.assert_array_equal(p[0], q[0])


@pytest.mark.parametrize("batchnorm", [False, True], ids=["std", "bn"])
def test_loss_and_grads_match_numerical_gradients(batchnorm):
    model, x, y = _small(batchnorm)
    _, grads = model.loss_and_grads(x, y)
    for layer, layer_grads in zip(model.layers, grads):
        for a, da in zip(layer, layer_grads):
            num = numerical_gradient(lambda: model.loss_and_grads(x, y)[0], a)
            # beta just before a BN layer has an exactly zero gradient: compare absolutely too
            np.testing.assert_allclose(da, num, rtol=1e-5, atol=1e-8)


def test_bn_output_is_invariant_to_the_scale_of_the_weights_before_it():
    model, x, _ = _small(True)
    out = model.forward(x)
    scaled = [[a * 5.0 if j == 0 else a for j, a in enumerate(p)] if i < 3 else p
              for i, p in enumerate(model.layers)]
    # BN(aWu) = BN(Wu) up to eps (BN paper Sec. 3.3); without BN the output would scale 5x
    np.testing.assert_allclose(model.forward(x, scaled), out, atol=1e-3)
    assert np.abs(out).max() > 0.1


def test_train_marks_divergence_with_a_trailing_nan():
    problem = e4.make_problem(0, n=100)
    cfg = e4.config(ics_layers={})
    losses = e4.train("std", problem, cfg, 0, lr=1.0, steps=200, probe=False,
                      progress=False)["losses"]
    assert len(losses) < 201 and math.isnan(losses[-1])
    assert all(math.isfinite(v) for v in losses[:-1])


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def result(request):
    return e4.run(e4.config(seed=request.param), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["D1", "D2"])
def test_asserted_claims_hold(result, label):
    c = next(c for c in result.claims if c.label == label)
    assert c.passed, f"{label}: {c.ours} (criterion {c.criterion})"


@pytest.mark.slow
def test_result_saves_plots_and_round_trips(result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = result.save(tmp_path, e4.plot(result))
    plt.close("all")
    assert all(pathlib.Path(p).stat().st_size > 0 for p in paths) and len(paths) == 3
    back = Result.from_dict(json.load(open(paths[0])))
    assert back.summary == pytest.approx(result.summary)
    assert [c.passed for c in back.claims] == [c.passed for c in result.claims]


def test_a_diverged_standard_net_counts_as_a_bn_win_in_d1():
    s = {"std/final_over_initial": math.nan, "bn/final_over_initial": 0.05, "std/ics_rel": 0.9,
         "bn/ics_rel": 0.9, "std/high_lr_diverged": True, "bn/high_lr_diverged": False}
    for v in ("std", "bn"):
        for n in ("middle", "late"):
            s[f"{v}/ics_cos/{n}"] = 0.5
    d1 = e4.claims(Result("deep_linear", e4.config(), {}, s))[0]
    assert d1.label == "D1" and d1.passed is True and "std diverged" in d1.ours
    s["bn/final_over_initial"] = math.nan
    assert e4.claims(Result("deep_linear", e4.config(), {}, s))[0].passed is False

"""E1 (Figure 1): estimators, and the calibrated criteria F1a-F1c."""
import numpy as np
import pytest

from minibn.experiments import e1_figure1 as e1
from minibn.experiments.result import Result

from .seeds import SEEDS


def test_band_drift_is_the_median_range_over_time():
    # 2 units: unit 0's median moves 0 -> 2, unit 1's 0 -> 4; spreads constant 2 and 6
    p = np.zeros((3, 3, 2))
    p[:, 1, 0] = [0, 2, 1]
    p[:, 1, 1] = [0, 4, 4]
    p[:, 0] = p[:, 1] - [1, 3]
    p[:, 2] = p[:, 1] + [1, 3]
    median, spread = e1.band_drift(p)
    assert median == pytest.approx(3.0) and spread == pytest.approx(0.0)


def test_typical_unit_has_the_median_drift():
    p = np.zeros((2, 3, 3))
    p[1, 1] = [5.0, 1.0, 3.0]
    assert e1.typical_unit(p) == 2


def test_percentiles_are_over_the_examples_per_unit():
    from minibn.experiments.numpy_mlp import MLP
    model = MLP([4, 3, 3, 2], "sigmoid", rng=np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(101, 4)).astype(np.float32)
    p = e1.sigmoid_input_percentiles(model, x)
    model.forward(x, train=False)
    h = model.pre_activations[-1]
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p[1], np.median(h, axis=0), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_figure1_claims_hold(seed):
    result = e1.run(e1.config(seed=seed, **e1.CALIBRATION), progress=False)
    by_id = {c.label: c for c in result.claims}
    for cid in ("F1a", "F1b", "F1c"):
        assert by_id[cid].passed, f"{cid} failed for seed {seed}: {by_id[cid].ours}"


def test_sensitivity_claim_is_reported_not_asserted():
    s = {"steps_to_85_bn": 250, "steps_to_85_plain": None, "final_acc_bn": 0.92,
         "final_acc_plain": 0.9, "drift_median_bn": 0.2, "drift_median_plain": 1.0,
         "drift_spread_bn": 1.0, "drift_spread_plain": 5.0,
         "init0.1_steps_to_90_bn": 750, "init0.1_steps_to_90_plain": 1500}
    claims = e1.claims(Result("figure1", e1.config(), {}, s))
    assert [c.passed for c in claims] == [True, True, True, None]
    assert [c.label for c in claims] == ["F1a", "F1b", "F1c", "F1s"]
    shortened = e1.claims(Result("figure1", e1.config(steps=500), {}, s))
    assert [c.passed for c in shortened] == [None] * 4
    assert "steps=500 differs from the calibrated configuration" in shortened[0].criterion
    assert "never" in claims[0].ours

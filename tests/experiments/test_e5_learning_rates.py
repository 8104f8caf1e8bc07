"""E5 (Bjorck et al.): criteria B1-B3, on the learning rates they need."""
import math

import pytest

from minibn.experiments import e5_learning_rates as e5
from minibn.experiments.result import Result

from .seeds import SEEDS


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_bn_allows_larger_learning_rates(seed):
    result = e5.run(e5.config(seed=seed, **e5.CALIBRATION), progress=False)
    assert [c.label for c in result.claims] == ["B1", "B2", "B3"]
    for claim in result.claims:
        assert claim.passed, f"{claim.criterion} failed for seed {seed}: {claim.ours}"


def test_claims_treat_divergence_as_unusable():
    s = {}
    for lr in e5.LRS:
        for net in ("plain", "bn"):
            diverged = net == "plain" and lr >= 1.0
            s[f"train_acc_{net}_relu_lr{lr:g}"] = math.nan if diverged else 0.99
            s[f"test_acc_{net}_relu_lr{lr:g}"] = math.nan if diverged else (0.95 if lr >= 1 else 0.9)
            s[f"diverged_at_{net}_relu_lr{lr:g}"] = 5 if diverged else None
    cfg = e5.config(sigmoid=False)
    assert e5.usable(s, "plain", cfg["lrs"]) == [0.01, 0.03, 0.1, 0.3]
    claims = e5.claims(Result("learning_rates", cfg, {}, s))
    assert [c.passed for c in claims] == [True, True, True]
    assert "diverged" in claims[0].ours

"""Every registered experiment follows one interface, so the CLI, calibration and lessons can
drive any of them the same way."""
import inspect

import pytest

from minibn.experiments import EXPERIMENTS, load
from minibn.experiments.result import Check, claim


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_has_config_run_claims_plot(name):
    module = load(name)
    for fn, params in (("config", ["fast", "seed", "overrides"]), ("run", ["cfg", "progress"]),
                       ("claims", ["result"]), ("plot", ["result"])):
        assert callable(getattr(module, fn, None)), f"{name} lacks {fn}()"
        assert list(inspect.signature(getattr(module, fn)).parameters) == params, (name, fn)
    fast, full = module.config(fast=True, seed=3), module.config(fast=False, seed=3)
    assert fast["seed"] == 3 and fast["fast"] is True and full["fast"] is False
    assert module.config(seed=3, marker=1)["marker"] == 1, "config must take overrides"
    assert set(module.SCALE_KEYS) <= set(fast), f"{name}: SCALE_KEYS not in its config"
    assert set(getattr(module, "CALIBRATION", {})) <= set(fast), name
    assert not set(getattr(module, "CALIBRATION", {})) & set(module.SCALE_KEYS), (
        f"{name}: the calibration runs must keep the calibrated scale")


def test_a_claim_passes_only_when_every_check_holds_and_nan_fails():
    ok = claim("X1", "c", "s", "o", "rule", [Check("a", 2.0, ">=", 1), Check("b", 0.1, "<", 1)])
    assert ok.passed is True and ok.criterion == "X1: rule" and len(ok.checks) == 2
    assert claim("X1", "c", "s", "o", "rule", [Check("a", float("nan"), ">=", 1)]).passed is False
    assert claim("X1", "c", "s", "o", "rule", [Check("a", None, "<=", 1)]).passed is False
    reported = claim("X2", "c", "s", "o", "rule", [Check("a", 0.0, ">=", 1)], "too noisy")
    assert reported.passed is None and reported.criterion == "X2: rule (too noisy)"
    with pytest.raises(ValueError, match="at least one check"):
        claim("X3", "c", "s", "o", "rule", [])
    with pytest.raises(ValueError, match="op must be"):
        Check("a", 1.0, "=>", 1)

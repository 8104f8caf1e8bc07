"""E8: lesson 09's measurements (``e8_sections``) and the experiment's claims on them."""
import json
import math
import pathlib

import numpy as np
import pytest
import torch

from minibn.experiments import e8_beyond_one_batch as e8
from minibn.experiments import e8_sections as sec
from minibn.experiments.result import Result

from .seeds import SEEDS


def _tensors(n=64):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return x, y, x[:32], y[:32]


def _flat(n, d):
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(n, d, generator=gen), torch.randint(0, 10, (n,), generator=gen),
            torch.rand(64, d, generator=gen), torch.randint(0, 10, (64,), generator=gen))


def test_sweep_trains_every_norm_at_every_batch_size():
    acc = sec.small_batch_sweep(_tensors(), (2, 16), steps=3, progress=False)
    assert set(acc) == set(sec.NORMS)
    assert all(len(a) == 2 and all(0 <= v <= 1 for v in a) for a in acc.values())


def test_ghost_bn_is_batch_norm_up_to_its_virtual_batch():
    """The lesson uses their float32 gap as the noise floor: in float64 they are one function."""
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    torch.manual_seed(0)
    bn = sec.make_net("bn", 8).double()
    torch.manual_seed(0)
    ghost = sec.make_net("ghost", 8).double()
    assert torch.equal(bn(x), ghost(x))
    torch.manual_seed(0)
    larger = sec.make_net("ghost", 16).double()
    x16 = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    assert not torch.allclose(bn(x16), larger(x16))


def test_make_net_names_the_unknown_norm():
    with pytest.raises(ValueError, match="norm must be one of bn, gn, brn, ghost, got 'ln'"):
        sec.make_net("ln", 4)


def test_two_passes_in_float32_keep_the_variance_where_one_pass_loses_it():
    """Small inputs here; H1's thresholds on the experiment's sizes are in the calibration."""
    for dtype in (torch.bfloat16, torch.float16):
        errors = sec.variance_errors(dtype, [0, 100], n=1024, channels=16)
        name = str(dtype).replace("torch.", "")
        assert list(errors) == [s.format(dtype=name) for s in sec.SCHEMES]
        assert max(errors["two-pass in float32"]) < 1e-5
        assert errors[f"one-pass in {name}"][1] > 0.1
        assert errors[f"two-pass in {name}"][1] < 0.02
    overflow = sec.variance_errors(torch.float16, [1000], n=256, channels=4)
    assert math.isnan(overflow["one-pass in float16"][0]), "x**2 overflows float16 above 256"


def test_variance_shift_matches_its_formula_and_vanishes_without_dropout():
    x = torch.rand(1000, 50, generator=torch.Generator().manual_seed(1))
    shift = sec.variance_shift(x, (0.0, 0.3, 0.5), hidden=64, width=16)
    assert abs(shift[0.0][0] - 1) < 0.1 and shift[0.0][1] == 1
    for p in (0.3, 0.5):
        measured, predicted = shift[p]
        assert predicted > 1.3 and abs(measured / predicted - 1) < 0.1


def test_weight_decay_shrinks_the_scale_invariant_weight_and_raises_its_angular_step():
    data = _flat(512, 64)
    plain = sec.weight_decay_run(data, 0.0, 150)
    decayed = sec.weight_decay_run(data, 0.05, 150)
    assert (np.diff(plain["norm"]) >= -1e-5).all(), "orthogonal steps never shrink the norm"
    assert decayed["norm"][-1] < 0.6 * plain["norm"][-1]
    assert decayed["angular"][-25:].mean() > 1.5 * plain["angular"][-25:].mean()


def test_zero_init_gamma_makes_every_residual_block_the_identity():
    x = torch.randn(16, 784)
    torch.manual_seed(0)
    zero = sec.residual_net(True).eval()
    torch.manual_seed(0)
    one = sec.residual_net(False).eval()
    with torch.no_grad():
        stem = zero[1](zero[0](x))
        assert torch.equal(zero[2:-1](stem), stem)  # ReLU outputs are >= 0, so relu(x + 0) = x
        assert not torch.allclose(one[2:-1](stem), stem)


def test_train_residual_stops_at_the_first_non_finite_loss():
    data = _flat(256, 784)
    run = sec.train_residual(data, True, 5, 0.1)
    assert len(run["loss"]) == 5 and np.isfinite(run["loss"]).all() and 0 <= run["test_accuracy"] <= 1
    blown = sec.train_residual(data, False, 50, 1e6)
    assert len(blown["loss"]) < 50 and not np.isfinite(blown["loss"][-1])


def _summary(cfg, **values):
    """A summary with every key ``claims`` reads, at values where every check holds."""
    s = {f"acc_{n}_b2": 0.5 for n in sec.NORMS}
    for name in e8.DTYPES:
        s[f"var_err_onepass_{name}_r100"] = 1.0
        s[f"var_err_twopass_float32_{name}_r100"] = 1e-7
    for p in cfg["dropout_rates"]:
        s[f"shift_measured_p{p:g}"] = s[f"shift_predicted_p{p:g}"] = 1 + 5 * p
    s["shift_max_rel_gap"] = 0.0
    for wd, norm, step in ((0.0, 6.0, 0.01), (0.01, 5.0, 0.015), (0.05, 2.0, 0.05)):
        s.update({f"wd{wd:g}_norm_start": 5.8, f"wd{wd:g}_norm_end": norm,
                  f"wd{wd:g}_angular_last25": step})
    s.update(res_gamma1_first10=60.0, res_zero_first10=2.0, res_gamma1_test_acc=0.6,
             res_zero_test_acc=0.8)
    return {**s, **values}


def test_claims_assert_only_in_the_calibrated_configuration_and_read_their_checks():
    cfg = e8.config(seed=0)
    verdicts = {c.label: c.passed for c in e8.claims(Result(e8.NAME, cfg, {}, _summary(cfg)))}
    assert verdicts == {"G1": None, "G2": None, "H1": True, "V1": True, "W1": True, "Z1": True,
                        "Z2": None}
    same = _summary(cfg, **{"wd0_norm_end": 2.5})  # decay that leaves the norm where it was
    assert not next(c for c in e8.claims(Result(e8.NAME, cfg, {}, same)) if c.label == "W1").passed
    lost = _summary(cfg, var_err_twopass_float32_float16_r100=float("nan"))
    assert not next(c for c in e8.claims(Result(e8.NAME, cfg, {}, lost)) if c.label == "H1").passed
    short = e8.config(seed=0, res_steps=10)
    assert all(c.passed is None for c in e8.claims(Result(e8.NAME, short, {}, _summary(short))))
    no_sweep = e8.config(seed=0, batch_sizes=[])
    labels = [c.label for c in e8.claims(Result(e8.NAME, no_sweep, {}, _summary(no_sweep)))]
    assert labels == ["H1", "V1", "W1", "Z1", "Z2"]


def test_run_names_a_configuration_the_claims_cannot_read():
    with pytest.raises(ValueError, match="ratios must include 100"):
        e8.run(e8.config(ratios=[0, 10]), progress=False)
    with pytest.raises(ValueError, match="weight_decays needs at least two values"):
        e8.run(e8.config(weight_decays=[0.0]), progress=False)


@pytest.fixture(scope="module", params=SEEDS, ids=lambda s: f"seed{s}")
def result(request):
    return e8.run(e8.config(seed=request.param), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["H1", "V1", "W1", "Z1"])
def test_asserted_criteria_hold(result, label):
    c = next(c for c in result.claims if c.label == label)
    assert c.passed, f"{c.claim}: {c.ours} (criterion {c.criterion})"


@pytest.mark.slow
def test_result_saves_plots_and_round_trips(result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = result.save(tmp_path, e8.plot(result))
    plt.close("all")
    assert len(paths) == 6 and all(pathlib.Path(p).stat().st_size > 0 for p in paths)
    back = Result.from_dict(json.load(open(paths[0])))
    assert back.summary == pytest.approx(result.summary, nan_ok=True)
    table = e8.variance_table(back)
    assert list(table) == list(e8.DTYPES) and all(len(t) == len(sec.SCHEMES) for t in table.values())
    assert e8.sweep(back)["acc"].keys() == sec.NORMS.keys()

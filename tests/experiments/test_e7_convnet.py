"""E7: the convnet, our BN tracking torch's (T1), and the summary helpers."""
import math

import pytest
import torch

from minibn.data import load_mnist
from minibn.experiments import e7_convnet as e7
from minibn.nn import BatchNorm2d

from .seeds import SEEDS


@pytest.fixture(scope="module")
def tensors():
    return e7.to_tensors(load_mnist(seed=0))


def test_make_cnn_variants():
    ours, theirs, plain = (e7.make_cnn(n) for n in ("minibn", "torch", "none"))
    x = torch.randn(3, 1, 28, 28)
    for m in (ours, theirs, plain):
        assert m(x).shape == (3, 10)
    assert sum(isinstance(m, BatchNorm2d) for m in ours.modules()) == 4
    assert sum(type(m) is torch.nn.BatchNorm2d for m in theirs.modules()) == 4
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs), "BN nets drop the conv bias"
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, torch.nn.Conv2d))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with pytest.raises(ValueError, match="norm"):
        e7.make_cnn("layer")


def test_to_tensors_standardizes(tensors):
    x_train, y_train, x_test, _ = tensors
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert abs(x_train.mean().item()) < 0.05 and abs(x_train.std().item() - 1) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_our_batchnorm2d_tracks_torch(tensors, seed):
    ours, theirs, weight_gap = e7.tracking(tensors, steps=30, lr=0.1, batch_size=64, seed=seed)
    assert len(ours) == len(theirs) == 30
    # float64: round-off amplified by SGD stays ~1e-12..1e-9 (float32 noise would reach ~1e-2)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-7
    assert weight_gap <= 1e-7
    assert ours[-1] < 0.7 * ours[0], "the tracked runs must actually train"


def test_usable_lrs_and_fastest():
    cfg = e7.config()
    s = {}
    for net in ("plain", "bn"):
        for lr in cfg["lrs"]:
            dead = (net == "plain" and lr >= 0.3) or lr >= 1.0
            s[f"diverged_at_{net}_lr{lr:g}"] = 12 if (net == "plain" and lr >= 1.0) else None
            s[f"final_acc_{net}_lr{lr:g}"] = math.nan if s[f"diverged_at_{net}_lr{lr:g}"] else (0.1 if dead else 0.95)
            s[f"steps_to_target_{net}_lr{lr:g}"] = None if dead else (100 if net == "bn" else 250)
    assert e7.usable(s, "plain", cfg) == [0.03, 0.1]
    assert e7.usable(s, "bn", cfg) == [0.03, 0.1, 0.3]
    assert e7.fastest(s, "bn") == (0.03, 100)

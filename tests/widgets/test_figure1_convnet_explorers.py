"""The explorers of lessons 05 and 07: what they compute, and one figure each when headless."""
import numpy as np
import pytest
import torch

from minibn.widgets import convnet as cw
from minibn.widgets import figure1 as fw


def test_small_init_squashes_plain_sigmoid_inputs_but_not_bn():
    plain, plain_norms = fw.activations_at_init(0.01, batchnorm=False, n=200)
    bn, _ = fw.activations_at_init(0.01, batchnorm=True, n=200)
    assert all(h.shape == (200, 100) for h in plain + bn)
    assert plain[-1].std() < 0.1
    assert all(abs(h.std() - 1) < 0.05 for h in bn)
    assert plain_norms[0] < 1e-2 * plain_norms[-1], "gradients vanish towards the input"


def test_learning_rate_explorer_shows_plain_diverging_at_lr_1(static_figures):
    curves = fw.loss_curves(1.0, steps=60)
    assert not np.isfinite(curves["plain"][-1]) and len(curves["plain"]) < 60
    assert len(curves["bn"]) == 60 and np.isfinite(curves["bn"]).all()
    fw.learning_rate_explorer(lr=1.0, steps=30)
    fw.init_scale_explorer()
    assert len(static_figures) == 2


def test_eval_mode_accuracy_ignores_batching_but_train_mode_does_not(static_figures):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2))
    x = torch.cat([torch.randn(100, 2) + 2, torch.randn(100, 2) - 2])
    y = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        idx = torch.randperm(200)[:50]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evals = {(bs, s): cw.batched_accuracy(model, x, y, bs, s, train_mode=False)
             for bs in (10, 100) for s in (False, True)}
    assert len(set(evals.values())) == 1 and evals[10, False] > 0.95
    assert cw.batched_accuracy(model, x, y, 10, True, train_mode=True) < 0.8
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), \
        "the explorer works on a copy"
    cw.eval_batch_explorer(model, x, y, batch_size=10)
    assert len(static_figures) == 1

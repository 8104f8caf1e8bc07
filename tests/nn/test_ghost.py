"""Ghost batch norm (minibn.nn.ghost): each virtual batch normalized alone, the module's running
statistics and eval mode, and the experiments' MLP using the same function."""
import pytest
import torch

from minibn import nn as mnn
from minibn.experiments import torch_mlp

F64 = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(12, 3), (12, 3, 5), (12, 3, 2, 4)])
def test_each_virtual_batch_is_batch_normalized_alone_with_gradients(shape):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 3).requires_grad_()
    w, b = (torch.rand(3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = mnn.ghost_batch_norm(x, 4, w, b)
    grads = torch.autograd.grad(out, (x, w, b), g)
    parts = [x[4 * i:4 * i + 4] for i in range(3)]
    ref = torch.cat([torch.nn.functional.batch_norm(p, None, None, w, b, training=True)
                     for p in parts])
    torch.testing.assert_close(out, ref, **F64)
    for got, want in zip(grads, torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(got, want, **F64)


def test_a_virtual_batch_of_the_whole_batch_is_batch_norm():
    torch.manual_seed(1)
    ours = mnn.GhostBatchNorm(3, virtual_batch_size=8, dtype=torch.float64)
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(8, 3, 2, 2, dtype=torch.float64) + 1
        torch.testing.assert_close(ours(x), theirs(x), **F64)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), **F64)
    ours.eval()
    theirs.eval()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)  # any batch size in eval
    torch.testing.assert_close(ours(x), theirs(x), **F64)


def test_running_statistics_average_the_virtual_batches():
    m = mnn.GhostBatchNorm(2, virtual_batch_size=3, momentum=1.0, dtype=torch.float64)
    x = torch.randn(9, 2, dtype=torch.float64) * 3
    m(x)
    parts = x.view(3, 3, 2)
    torch.testing.assert_close(m.running_mean, parts.mean(1).mean(0), **F64)
    torch.testing.assert_close(m.running_var, parts.var(1, unbiased=True).mean(0), **F64)
    assert "virtual_batch_size=3" in repr(m)


def test_bad_batch_sizes_are_refused_with_the_sizes_named():
    with pytest.raises(ValueError, match=r"N = 10 must be a positive multiple of "
                                         r"virtual_batch_size = 4"):
        mnn.ghost_batch_norm(torch.randn(10, 3), 4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        mnn.ghost_batch_norm(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="expected at least 2D input"):
        mnn.GhostBatchNorm(3, 2)(torch.randn(4))


def test_the_experiments_mlp_uses_ghost_batch_norm():
    gen = torch.Generator().manual_seed(2)
    mlp = torch_mlp.MLP([5, 4, 2], norm="ghost", group=4, generator=gen, dtype=torch.float64)
    h = torch.randn(12, 4, dtype=torch.float64)
    torch.testing.assert_close(mlp.normalize(h, 0), mnn.ghost_batch_norm(h, 4), **F64)
    torch.testing.assert_close(mlp.normalize(h[:3], 0), torch_mlp.batch_normalize(h[:3]), **F64)

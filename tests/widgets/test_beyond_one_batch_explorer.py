"""Lesson 09's explorer, figures and gloo cell (the measurements are E8's: tests/experiments)."""
import numpy as np
import pytest
import torch

from minibn.checks.beyond_one_batch import shard_moments
from minibn.experiments import e8_sections as sec
from minibn.widgets import beyond_one_batch as lesson


def test_the_explorer_draws_the_sweep_one_batch_size_at_a_time(static_figures):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    acc = sec.small_batch_sweep((x, y, x[:32], y[:32]), (2, 16), steps=3, progress=False)
    lesson.batch_size_explorer({"batch_sizes": [2, 16], "steps": 3, "acc": acc})
    assert len(static_figures) == 1 and len(static_figures[0].axes) == 2


MERGE_SOURCE = '''
def merge_moments(a, b):
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    if n_a == 0 or n_b == 0:
        return b if n_a == 0 else a
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n
'''


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_gloo_cell_merges_the_concatenated_batch_on_every_rank_with_an_empty_share():
    from minibn.nn import run_distributed

    x = np.random.default_rng(3).normal(5, 2, (6, 3, 4))
    shares = [x[:6], x[6:]]
    n, mean, m2 = shard_moments(x)
    for out in run_distributed(lesson.gloo_merge, 2, MERGE_SOURCE, shares):
        count, got_mean, got_m2 = out["merged"]
        assert count == n
        np.testing.assert_allclose(got_mean, mean, rtol=1e-12)
        np.testing.assert_allclose(got_m2, m2, rtol=1e-10)
        np.testing.assert_allclose(out["sync_var"], m2 / (n - 1), rtol=1e-10)

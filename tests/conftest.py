"""Shared fixtures. Keep this minimal: tests set up what they need themselves."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator per test, so a test's data doesn't depend on test order."""
    return np.random.default_rng(20150211)


def pytest_configure(config):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)  # 2 shared cores: one thread is faster than two fighting

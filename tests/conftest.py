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


def pytest_collection_modifyitems(items):
    """Files with slow tests first, each file's tests in their order: under ``make test``'s
    workers (a file to a worker) the long files then start at once instead of ending the run."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


_seconds_by_file = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    _seconds_by_file[path] = _seconds_by_file.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Where the suite's time goes, per file (setup included): what to trim when `make test` nears
    its 40-minute budget on CI's 2 cores."""
    if not _seconds_by_file:
        return
    total = sum(_seconds_by_file.values())
    terminalreporter.write_sep("=", f"slowest files ({total / 60:.1f} min of test time in all)")
    for path, seconds in sorted(_seconds_by_file.items(), key=lambda kv: -kv[1])[:12]:
        terminalreporter.write_line(f"{seconds:8.1f}s  {100 * seconds / total:4.1f}%  {path}")

"""One JupyterLab server and one Chromium for every browser test.

The server serves a temp copy of the course (never the checkout: JupyterLab autosaves, and a test
must not write outputs into committed notebooks or a learner's lessons/): ``START.ipynb``,
``nbgrader_config.py``, ``solutions/<lesson>/`` for every lesson plus the harness's own demo lesson,
and ``lessons/<lesson>/`` generated from them by ``minibn.grading.release``, as ``make lessons`` does.
Kernels get ``MINIBN_FAST=1`` so Run All stays quick; ``MINIBN_STATIC`` is unset so explorers are
live widgets. ``plain_lab`` is a second server without ``MINIBN_FAST``, as a learner's ``make lab``
runs, for the Validate button at the size a learner meets it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from labdriver import CHROMIUM_ARGS, FIXTURE, REPO, SHOTS, START_PAGE, LabServer, find_chromium, lesson_dirs


def venv_env():
    # nbgrader runs `alembic` by name: the venv's bin/ must be on PATH even when it isn't activated.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def _unavailable(reason):
    # CI must never pass by skipping the browser; elsewhere a missing browser is a skip with a fix.
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


# Exactly what `make lessons` does, aimed at the temp course.
RELEASE = "import sys; from minibn.grading.release import release; release(sys.argv[1])"


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    """A temp course dir: solutions copied in, lessons released from them as `make lessons` does."""
    root = tmp_path_factory.mktemp("course")
    shutil.copy(REPO / "nbgrader_config.py", root)
    shutil.copy(REPO / START_PAGE, root)
    sources = [FIXTURE / "00-demo", *lesson_dirs()]
    for src in sources:
        shutil.copytree(src, root / "solutions" / src.name,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "figures", "__pycache__"))
    done = subprocess.run([sys.executable, "-c", RELEASE, str(root)],
                          cwd=root, capture_output=True, text=True, timeout=300, env=venv_env())
    assert done.returncode == 0, done.stderr[-4000:]
    return root


@pytest.fixture(scope="session")
def lab(course, tmp_path_factory):
    server = LabServer(course, tmp_path_factory.mktemp("jupyter"), open_file=START_PAGE,
                       env={"MINIBN_FAST": "1", "PATH": venv_env()["PATH"]})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def plain_lab(course, tmp_path_factory):
    """A second server started the way a learner's `make lab` starts it: no MINIBN_FAST."""
    server = LabServer(course, tmp_path_factory.mktemp("jupyter-plain"), open_file=START_PAGE,
                       env={"MINIBN_FAST": None, "PATH": venv_env()["PATH"]})
    assert "MINIBN_FAST" not in server.env
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    chromium = find_chromium()
    if chromium is None:
        _unavailable("Chromium not found ($MINIBN_CHROMIUM, `chromium` on PATH, /usr/bin/chromium): as root on Debian run `make browser-deps`,"
                     " or `apt-get install chromium`; set MINIBN_CHROMIUM to use another binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: `make venv` installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield ctx
    ctx.close()


@pytest.fixture(scope="session")
def shots():
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS

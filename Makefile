# minibn: `make lab` opens the course, `make test` runs every test (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch on 2 busy cores: one intra-op thread is several times faster than two fighting
# (docs/browser-tests.md, "Threads"); every kernel started from make inherits these.
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv lab test quicktest lessons grade bench reproduce calibrate clean-venv browser browser-deps sandbox-deps

venv: $(STAMP)

$(STAMP): requirements/course.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/pip install -r requirements/course.txt
	$(BIN)/pip install --no-deps -e .
	mkdir -p $(VENV)/share/jupyter/lab/settings
	echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	    > $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

lab: venv
	$(BIN)/jupyter lab START.ipynb --ServerApp.root_dir="$(CURDIR)" $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# A pytest worker per CPU, each test file whole on one worker: a file's module fixtures (the graded
# course of tests/grading/test_pipeline.py, an experiment's runs) are built once. TEST_WORKERS=0
# runs in one process.
TEST_WORKERS ?= auto

test: venv browser-deps sandbox-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The browser tests drive Debian's Chromium. As root on Debian (CI), install it when missing; if
# that fails, the tests themselves fail under CI=true and skip, saying why, elsewhere.
browser-deps:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make: chromium not installed; browser tests will skip (fail under CI=true)"; }

# Grading runs learner code in a bubblewrap sandbox (docs/grading.md). As root on Debian (CI),
# install it when missing; under CI=true a missing bwrap is an error, elsewhere grading itself
# refuses to run and says how to install it.
sandbox-deps:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } ; } \
	  || { [ "$$CI" = true ] && { echo "make: bubblewrap (bwrap) is missing and could not be installed; grading needs it" >&2; exit 1; } ; } \
	  || echo "make: bubblewrap not installed; grading will refuse to run (apt-get install bubblewrap)"

browser: venv browser-deps
	$(BIN)/python -m pytest tests/browser -v

quicktest: venv
	$(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile

# Regenerate lessons/ from solutions/ (all, or one: `make lessons LESSON=01-normalize`); a lesson
# the learner edited is moved to lessons/<lesson>/backups/ first, never overwritten.
lessons: venv
	$(BIN)/python -m minibn.grading.release $(LESSON)

# Autograde submitted/<student>/<lesson>/, re-grade out of the kernel, feedback/ and grades.csv.
grade: venv sandbox-deps
	$(BIN)/python -m minibn.grading grade $(GRADE_ARGS)

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

reproduce: venv
	$(BIN)/python -m minibn.experiments all --fast --out build/reproduce

# Every criterion's statistic over seeds and two CPU code paths (docs/reproductions.md); cached
# per run in build/calibration, so an interrupted calibration resumes.
calibrate: venv
	$(BIN)/python -m minibn.experiments calibrate all --paths native:0-19,avx2:0-19 --out build/calibration

clean-venv:
	rm -rf $(VENV)

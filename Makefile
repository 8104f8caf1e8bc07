# minibn: `make lab` opens the course, `make test` runs every test (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch on 2 busy cores: one intra-op thread is several times faster than two fighting (environment.md).
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv lab test quicktest lessons bench clean-venv

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
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

test: venv
	$(BIN)/python -m pytest

quicktest: venv
	$(BIN)/python -m pytest -m "not slow" -q

lessons: venv
	$(BIN)/python -m minibn.grading.release

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)

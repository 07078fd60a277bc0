# Two commands for a fresh machine: `make repro` (the pipeline) and `make test` (checks + tests).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
POETRY := $(TOOLS)/poetry/bin/poetry
# Setup is redone only when the lock or the project metadata changes.
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

PLOTS_TEMPLATE := $(TOOLS)/plots/template.html
# DVC's own plot page uses vega 5.20.2; vega-lite 5.2.0 needs vega >= 5.21 as an npm peer.
VEGA_PACKAGES := vega@5.21.0 vega-lite@5.2.0 vega-embed@6.18.2

.PHONY: setup repro test test-fast lint pytest compose mlflow-server verify plots browser clean-venv

setup: $(STAMP)

$(POETRY):
	$(PYTHON) -m venv $(TOOLS)/poetry
	$(TOOLS)/poetry/bin/pip install --quiet --disable-pip-version-check "poetry>=2.1,<3" "poetry-plugin-export>=1.9,<2"

$(STAMP): poetry.lock pyproject.toml | $(POETRY)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(POETRY) check --lock
	$(POETRY) export --with dev --without-urls -f requirements.txt -o $(VENV)/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r $(VENV)/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

repro: setup
	scripts/mlflow_server.sh ensure
	$(BIN)/flower-model compose --check
	$(BIN)/dvc repro

# The plots template (npm) is needed by the headless-browser test; Chromium itself comes from
# `make browser` (Debian package, root), which CI runs.
test: setup $(PLOTS_TEMPLATE)
	$(BIN)/pre-commit run --all-files --show-diff-on-failure
	$(BIN)/pytest

# The inner loop: no pre-commit, no test marked slow (training, servers, DDP, Slurm).
test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/pre-commit run --all-files

pytest: setup
	$(BIN)/pytest

compose: setup
	$(BIN)/flower-model compose

mlflow-server: setup
	scripts/mlflow_server.sh ensure

$(PLOTS_TEMPLATE): scripts/build_plots_template.py | $(STAMP)
	npm install --silent --no-save --no-package-lock --prefix $(TOOLS)/plots $(VEGA_PACKAGES)
	$(BIN)/python scripts/build_plots_template.py $(TOOLS)/plots/node_modules $@

plots: setup $(PLOTS_TEMPLATE)
	$(BIN)/dvc plots show --html-template $(PLOTS_TEMPLATE) -o plots_html
	@echo "open plots_html/index.html (renders offline)"

browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# Triton's native onnxruntime backend (build/triton-backend) and NVIDIA's perf_analyzer
# (build/perf_analyzer); their Debian build tools come from `make triton-build-deps` (root), which
# CI runs. Tests that need them skip, naming these targets.
.PHONY: triton-build-deps triton-backend perf-analyzer
triton-build-deps:
	command -v cmake g++ patchelf unzip >/dev/null && test -f /usr/include/rapidjson/document.h || { apt-get update -qq && apt-get install -y -qq cmake g++ rapidjson-dev patchelf unzip; }

triton-backend: setup
	scripts/build_triton_backend.sh

perf-analyzer: setup
	scripts/get_perf_analyzer.sh

verify: setup $(PLOTS_TEMPLATE)
	scripts/verify.sh

clean-venv:
	rm -rf $(VENV) $(TOOLS)

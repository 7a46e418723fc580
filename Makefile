# Two commands on a fresh machine (Python 3.10+): `make quickstart` and `make test`.
# Each creates the local virtual environment .venv on first use; both are safe to rerun.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: quickstart test lint bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,demo]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

quickstart: $(STAMP)  ## make shapes data, train, evaluate, bulk-classify into Parquet
	HF_HUB_OFFLINE=1 $(VENV)/bin/raycls quickstart --workdir quickstart

test: $(STAMP)  ## the whole test suite (what CI runs)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_classify.py && $(VENV)/bin/python bench/bench_train.py

clean:
	rm -rf quickstart .pytest_cache

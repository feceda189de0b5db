# One-command setup: `make run` and `make test` create .venv if needed and install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEEDS ?= 0,1,2
EPOCHS ?= 20
STRATEGIES ?= naive,ewc,lwf,si,hat,joint
RESULTS ?= results

.PHONY: install run report test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m benchmark run --scenario split-digits --strategies $(STRATEGIES) --seeds $(SEEDS) --epochs $(EPOCHS) --out $(RESULTS)
	$(PY) -m benchmark run --scenario permuted-digits --strategies $(STRATEGIES) --seeds $(SEEDS) --epochs $(EPOCHS) --out $(RESULTS)
	$(MAKE) --no-print-directory report

report: $(STAMP)
	$(PY) -m reports --results $(RESULTS) --out $(RESULTS)/report

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(RESULTS) .pytest_cache

# One-command setup: `make run` and `make test` create .venv if needed and install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEEDS ?= 0,1,2
EPOCHS ?= 200
STRATEGIES ?= naive,ewc,lwf,si,hat,joint
RESULTS ?= results
# the embedded scenarios; make run reads their presets selected on validation (make tune)
SCENARIOS ?= split-digits permuted-digits
PRESETS ?= configs/tuned
# the class-incremental protocol (no task label at test) on the embedded split, every memory at
# 200 samples (A-GEM: 40 per experience); presets in $(PRESETS)/class/
CLASS_SCENARIOS ?= split-digits
CLASS_STRATEGIES ?= naive,ewc,lwf,si,hat,packnet,replay,agem,der,er-ace,icarl,gdumb,joint
CLASS_SET := scenario.protocol=class agem.patterns_per_experience=40
TUNE_SEEDS ?= 100-102
COMMA := ,
JOBS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: install run report test lint bench bench-gpu bench-report clean paper tune

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

# The paper's recipe (up to $(EPOCHS) epochs per task, early stopping on validation) for every
# strategy, seed and scenario: one pool of $(JOBS) worker processes, longest runs first.
# PRESETS= (empty) runs the registry's defaults (the paper's constants) instead of the presets
run: $(STAMP)
	$(PY) -m benchmark run \
		$(if $(PRESETS),$(foreach s,$(SCENARIOS),--config $(PRESETS)/$(s).yaml),--scenario $(subst $(eval) ,$(COMMA),$(SCENARIOS))) \
		--strategies $(STRATEGIES) --seeds $(SEEDS) --epochs $(EPOCHS) --jobs $(JOBS) --out $(RESULTS)
	$(PY) -m benchmark run \
		$(if $(PRESETS),$(foreach s,$(CLASS_SCENARIOS),--config $(PRESETS)/class/$(s).yaml),--scenario $(subst $(eval) ,$(COMMA),$(CLASS_SCENARIOS)) --set $(CLASS_SET)) \
		--strategies $(CLASS_STRATEGIES) --seeds $(SEEDS) --epochs $(EPOCHS) --jobs $(JOBS) --out $(RESULTS)
	$(MAKE) --no-print-directory report

# Select every strategy's hyperparameters on validation data (seeds apart from the evaluation
# seeds) and write $(PRESETS)/<scenario>.yaml, which make run reads; resumable.
tune: $(STAMP)
	set -e; for s in $(SCENARIOS); do \
		$(PY) -m benchmark tune --scenario $$s --strategies $(STRATEGIES) --seeds $(TUNE_SEEDS) \
			--epochs $(EPOCHS) --jobs $(JOBS) --out $(RESULTS)/tune --preset $(PRESETS)/$$s.yaml; \
	done
	set -e; for s in $(CLASS_SCENARIOS); do \
		$(PY) -m benchmark tune --scenario $$s --strategies $(CLASS_STRATEGIES) --set $(CLASS_SET) \
			--seeds $(TUNE_SEEDS) --epochs $(EPOCHS) --jobs $(JOBS) --out $(RESULTS)/tune \
			--preset $(PRESETS)/class/$$s.yaml; \
	done

report: $(STAMP)
	$(PY) -m reports --results $(RESULTS) --out $(RESULTS)/report

test: $(STAMP)
	$(PY) -m pytest -q

# The paper's experiments (configs/paper/*.yaml) at GPU scale: prints the commands; RUN=1 runs
# them one after the other into results/paper and writes its report.
PAPER_PRESETS ?= pmnist cifar mixture robustness compression
PAPER_FLAGS ?= --device cuda --jobs 4

paper: $(if $(filter 1,$(RUN)),$(STAMP))
ifeq ($(RUN),1)
	set -e; for p in $(PAPER_PRESETS); do \
		$(PY) -m benchmark run --config configs/paper/$$p.yaml $(PAPER_FLAGS); \
	done
	$(PY) -m reports --results results/paper --out results/paper/report --targets configs/paper/targets.csv
else
	@for p in $(PAPER_PRESETS); do \
		echo "python -m benchmark run --config configs/paper/$$p.yaml $(PAPER_FLAGS)"; \
	done
	@echo "python -m reports --results results/paper --out results/paper/report --targets configs/paper/targets.csv"
	@echo "# make paper RUN=1 runs them (datasets under data/, or add --download to PAPER_FLAGS)"
endif

# Speed benchmark: HAT vs Naive and suite vs a raw loop, side by side, in one run.
bench: $(STAMP)
	$(PY) scripts/bench.py --out $(RESULTS)/bench.json

# The GPU path in one call (CUDA-only tests, make bench on cuda, task inference on cuda).
bench-gpu: $(STAMP)
	OUT=$(RESULTS)/gpu PY=$(PY) bash scripts/gpu_check.sh

# Report speed: a full report over 200 synthetic run records (target <= 10 s on 2 cores).
bench-report: $(STAMP)
	$(PY) scripts/bench_report.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(RESULTS) .pytest_cache

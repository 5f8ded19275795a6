# Two entry points for a fresh machine (see README):
#   make test   install the pinned CPU toolchain and the package, lint, run the test suite
#   make train  install the data and the package; `mwnet fit` on noisy Fashion-MNIST: train the
#               candidate methods, report the label issues, ship the model chosen on
#               validation data (minutes on 2 cores)
#   make suite  the Fashion-MNIST evidence suite behind docs/RESULTS.md (about 3.3 hours, 2 cores)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PRESET ?= fmnist-flip2-40-mlp
# pytest-xdist workers: one per core of CI's 2-core machine (each computes on one torch
# thread, see tests/conftest.py); worksteal hands a worker that ran dry the far end of the
# other's queue, so each file's tests mostly stay on one worker (module fixtures build once)
TEST_WORKERS ?= 2

.PHONY: test setup-test lint train setup-train suite

setup-test:
	$(PIP) install -q -r requirements-ci.txt
	$(PIP) install -q -e ".[test]"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: setup-test lint
	$(PYTHON) -m pytest -n $(TEST_WORKERS) --dist worksteal

setup-train:
	command -v apt-get >/dev/null && (apt-get install -y -q dataset-fashion-mnist || \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) || true
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[train]"

train: setup-train
	$(PYTHON) -m mwnet fit --preset $(PRESET)

suite: setup-train
	$(PYTHON) -m mwnet suite --readme README.md

# triage-node: `make run` starts the daemon on its embedded defaults, `make test` runs the whole test suite.
# Both set everything up on a fresh Debian machine with Python 3.11 (venv, torch CPU build first, the package).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PEERS := dcmtk orthanc orthanc-dicomweb chromium invesalius-examples postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test peers lint bench reliability install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: a CPU build; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

run: $(STAMP)
	$(BIN)/triage-node serve --config config.yaml

# The real peers the tests talk to: DCMTK, Orthanc, dicom3tools, Chromium, PostgreSQL (a throwaway cluster per test
# session, tests/support/pgserver.py), and the invesalius head CT.
peers:
	@missing=""; \
	for p in $(APT_PEERS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing test peers:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi; \
	if ! dpkg -s dicom3tools >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends dicom3tools || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends dicom3tools; }; \
	fi

test: $(STAMP) peers lint
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)  # the slowest tests, for the 20-minute CI budget

lint: $(STAMP)
	$(BIN)/ruff check triage_node triage_lab tests bench
	$(BIN)/mypy  # the packages and settings in pyproject.toml

# The whole fault-injection suite at full size (30+ kills, 8 x 250 load); `make test` runs a smaller version.
reliability: $(STAMP) peers
	TRIAGE_NODE_FULL=1 $(BIN)/python -m pytest -q -m reliability tests/reliability

bench: $(STAMP) peers
	$(BIN)/python bench/run_all.py

install:
	$(SUDO) bash systemd/install.sh

clean:
	rm -rf var test-output

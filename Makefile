# Every target does its own set-up, idempotently: Debian packages, the virtualenv, the package.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := libvirt-dev pkg-config gcc python3-dev python3-venv openssh-client gnupg
MANIFESTS ?= manifests

.PHONY: setup system-packages run plan test test-unit test-sandbox test-browser test-fleet test-e2e lint golden bench bench-compare schema clean doctor

setup: system-packages $(STAMP)

system-packages:
	@scripts/ensure-system-packages.sh $(SYSTEM_PACKAGES)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

## make run: set up, then plan and apply the example manifests on the embedded sandbox host.
run: setup
	$(BIN)/virt-reconcile plan $(MANIFESTS); status=$$?; [ $$status -eq 0 ] || [ $$status -eq 2 ]
	$(BIN)/virt-reconcile apply $(MANIFESTS)

plan: setup
	$(BIN)/virt-reconcile plan $(MANIFESTS); status=$$?; [ $$status -eq 0 ] || [ $$status -eq 2 ]

## make test: set up, then lint, type-check and run every test tier.
test: setup lint test-unit test-sandbox test-browser test-fleet test-e2e

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-sandbox: setup
	$(BIN)/pytest -q tests/sandbox

## the browser tier: as root, installs Debian's chromium and chromium-driver; the dashboard of a real
## daemon in headless chromium (UPDATE_SCREENSHOT=1 also rewrites docs/dashboard.png)
test-browser: setup
	@scripts/browser-setup.sh
	$(BIN)/pytest -q tests/browser

## the fleet tier: as root, many libvirtd session daemons serving libvirt's test driver, latency
## proxies and hung hosts on this machine (tests/fleetlab.py starts and stops them itself)
test-fleet: setup
	@scripts/fleet-setup.sh
	$(BIN)/pytest -q tests/fleet

## the real-hypervisor tier: as root, installs and starts libvirtd with QEMU and builds a tiny guest
test-e2e: setup
	@scripts/e2e-setup.sh
	$(BIN)/pytest -q tests/e2e

lint: setup
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/ruff format --check reconciler tests bench
	$(BIN)/mypy reconciler
	$(BIN)/lint-imports
	$(BIN)/actionlint .github/workflows/*.yml

## make golden: rewrite the golden files (markdown plans, XML merges) from the code; review the diff
golden: setup
	UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/unit/test_markdown.py tests/unit/test_merge_golden.py

## make bench: the sandbox benchmark against the libvirt-python floor, the daemon's latencies, the
## field-level diff (hand-written vs deepdiff, when installed), the CLI's start-up time, and (as
## root) the fleet: 20 libvirt daemons x 200 domains at 20 ms round trip
bench: setup
	@if [ "$$(id -u)" -eq 0 ]; then scripts/e2e-setup.sh; fi
	$(BIN)/python bench/bench_sandbox.py
	$(BIN)/python bench/bench_daemon.py
	$(BIN)/python bench/bench_diff.py
	$(BIN)/python bench/bench_startup.py
	@if [ "$$(id -u)" -eq 0 ]; then scripts/fleet-setup.sh && $(BIN)/python bench/bench_fleet.py; \
	  else echo "bench_fleet: skipped (needs root to start the fleet lab)"; fi
	@if [ "$$(id -u)" -eq 0 ]; then $(BIN)/python bench/bench_volumes.py; \
	  else echo "bench_volumes: skipped (needs root: this machine's libvirtd)"; fi

doctor: setup
	$(BIN)/virt-reconcile doctor

## make bench-compare: virt-reconcile vs Ansible community.libvirt, a virsh loop and the libvirt-python
## floor on this machine's libvirtd (as root; about 20 minutes); writes docs/benchmarks.md and .png
bench-compare: setup
	@scripts/e2e-setup.sh
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@test -x .cache/bench/ansible-venv/bin/ansible-playbook || { $(PYTHON) -m venv .cache/bench/ansible-venv && \
	  .cache/bench/ansible-venv/bin/pip install --quiet 'ansible>=12,<13' libvirt-python lxml; }
	$(BIN)/python bench/bench_compare.py

schema: setup
	$(BIN)/virt-reconcile schema --out schemas

## make fuzz: the manifest loader fuzzed with a large budget from a random seed (make test runs 200
## examples, derandomized); VR_FUZZ_EXAMPLES=N sets the budget, and a failure prints how to replay it
VR_FUZZ_EXAMPLES ?= 20000
.PHONY: fuzz
fuzz: setup
	VR_FUZZ_EXAMPLES=$(VR_FUZZ_EXAMPLES) $(BIN)/pytest -q tests/unit/test_fuzz_manifests.py

## make dist: an sdist and a wheel (built from the sdist) in dist/, for `pip install` or `pipx install`
## (which build libvirt-python from source: they need libvirt-dev pkg-config gcc python3-dev)
.PHONY: dist
dist: setup
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis manifests/state .cache build dist *.egg-info

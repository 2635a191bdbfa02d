# kubetrain: train TensorFlow/Keras image classifiers as batch jobs on Kubernetes.
# `make` alone prints this help.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= runs/demo

.DEFAULT_GOAL := help

.PHONY: help
help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv with the pinned dependencies (done by every target that needs it)

.PHONY: demo
demo: $(STAMP) ## train on the built-in digits dataset (no cluster, no cloud) and print where the report is
	$(PY) -m trainer --data builtin:digits --output $(RUN)
	@echo "report: $(RUN)/report/report.html"

.PHONY: test
test: $(STAMP) ## run the whole test suite (starts the GCS emulator and the local control plane it needs)
	$(PY) -m pytest

.PHONY: lint
lint: $(STAMP) ## ruff on the Python code
	$(VENV)/bin/ruff check trainer jobs tests

.PHONY: cluster-build
cluster-build: ## build etcd and the Kubernetes control plane from Go modules (cached; ~20 min the first time)
	@bash tests/cluster/build.sh

.PHONY: cluster-up
cluster-up: $(STAMP) cluster-build ## start a local Kubernetes on 127.0.0.1 (no Docker) and print `export KUBECONFIG=...`
	@$(PY) tests/cluster/local_cluster.py up

.PHONY: cluster-down
cluster-down: ## stop the cluster started by `make cluster-up`, leaving nothing running
	@$(PY) tests/cluster/local_cluster.py down

.PHONY: clean
clean: ## remove the virtualenv and local runs
	rm -rf $(VENV) runs

# kubetrain: train TensorFlow/Keras image classifiers as batch jobs on Kubernetes.
# `make` alone prints this help.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN ?= runs/demo
# checkov's pins conflict with the project's (see tests/unit/test_manifests_lint.py): own venv
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
IMAGE ?= kubetrain-trainer:0.1.0
IMAGE_CPU ?= kubetrain-trainer-cpu:0.1.0
KIND_CLUSTER ?= kubetrain
KIND_CONTEXT := kind-$(KIND_CLUSTER)

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

.PHONY: bench
bench: $(STAMP) ## trainer vs the tutorial's script, side by side (~25 min; BENCH_ARGS=--quick checks the harness in ~3)
	$(PY) -m bench $(BENCH_ARGS)

.PHONY: test
test: $(STAMP) $(CHECKOV_STAMP) test-services ## run the whole test suite (starts the GCS emulator and the local control plane it needs)
	$(PY) -m pytest --durations=40

.PHONY: test-e2e
test-e2e: $(STAMP) test-services ## the trainer's own image on the real node: kind example, eviction, OOM (~3 min once the image is built)
	KUBETRAIN_E2E=1 $(PY) -m pytest tests/cluster/test_real_node_trainer.py

.PHONY: test-services
test-services: ## build the test control plane from Go modules when Go is here, install headless Chromium and podman/buildah/mmdebstrap when missing (CI requires all)
	@bash tests/image/setup.sh
	@# The test images build in the background while Go compiles (mostly downloads: they overlap);
	@# a test that needs one waits for it (tests/image/images.py's build lock).
	@if [ -x $(PY) ] && command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1; then \
	  log="$${KUBETRAIN_CACHE:-$$HOME/.cache/kubetrain}/images/prebuild.log"; mkdir -p "$$(dirname "$$log")"; \
	  echo "building the test images in the background (log: $$log)" >&2; \
	  setsid nohup $(PY) -m tests.image.images prebuild > "$$log" 2>&1 < /dev/null & \
	fi
	@if command -v go >/dev/null 2>&1; then bash tests/cluster/build.sh && bash tests/cluster/build_node.sh; \
	elif [ "$${CI:-}" = true ]; then echo "go not found: CI needs it to build the test control plane" >&2; exit 1; \
	else echo "go not found: the control-plane tests (tests/cluster) will be skipped" >&2; fi
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (Debian's package) for the browser tests" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif [ "$${CI:-}" = true ]; then echo "chromium not found and cannot apt-get it: CI needs it for tests/browser" >&2; exit 1; \
	else echo "chromium not found: the browser tests (tests/browser) will be skipped (apt-get install chromium)" >&2; fi

.PHONY: lint
lint: $(STAMP) ## ruff on the Python code
	$(VENV)/bin/ruff check trainer jobs tests

.PHONY: bench-accuracy
bench-accuracy: $(STAMP) ## old vs new (data-fitting) defaults on generated glyphs and photos, same epochs (~20 min; --quick ~3)
	$(PY) -m bench.accuracy $(BENCH_ARGS)

.PHONY: bench-precision
bench-precision: $(STAMP) ## bf16 vs float32 on this CPU (matmul GFLOP/s, seed CNN images/s) and what precision: auto picks (~2 min)
	$(PY) -m bench.precision $(BENCH_ARGS)

.PHONY: bench-backbones
bench-backbones: $(STAMP) ## images/s of each backbone at its default size, head phase vs full fine-tune (~4 min)
	$(PY) -m bench.backbones $(BENCH_ARGS)

.PHONY: bench-gate
bench-gate: $(STAMP) ## the promotion gate on 20,000 simulated nights per row: false-promotion rate and power (~15 s)
	$(PY) -m bench.promotion_gate $(BENCH_ARGS)

.PHONY: bench-gcs
bench-gcs: $(STAMP) ## benchmark parallel vs sequential download of 1,000 small objects from the GCS emulator (~4 min)
	$(PY) -m bench.gcs_download

.PHONY: bench-multiworker
bench-multiworker: $(STAMP) ## 2 workers (MultiWorkerMirroredStrategy) vs 1 process, same global batch (~5 min)
	$(PY) -m bench.multiworker --rounds 2 --epochs 4

.PHONY: bench-data
bench-data: $(STAMP) ## packed shards streamed vs download-all, 1k/10k/100k JPEGs in the GCS emulator (~20-25 min)
	$(PY) -m bench.data_stream $(BENCH_DATA_ARGS)

.PHONY: cluster-build
cluster-build: ## build etcd, the Kubernetes control plane, the real node (kubelet, kube-proxy, CoreDNS) and Kueue from Go modules (cached; 15-20 min the first time, Kueue 10-30 more)
	@bash tests/cluster/build.sh
	@bash tests/cluster/build_node.sh

.PHONY: cluster-up
cluster-up: $(STAMP) cluster-build ## start a local Kubernetes (no Docker; a real containerd node as root, KUBETRAIN_NODE=test for the test kubelet) and print `export KUBECONFIG=...`
	@$(PY) tests/cluster/local_cluster.py up

.PHONY: cluster-down
cluster-down: ## stop the cluster started by `make cluster-up`, leaving nothing running, mounted or bridged
	@$(PY) tests/cluster/local_cluster.py down

$(CHECKOV_STAMP): requirements-checkov.lock
	@test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r requirements-checkov.lock
	@touch $@

.PHONY: checkov
checkov: $(CHECKOV_STAMP) ## install checkov (Kubernetes security linter) into its own venv, .venv/checkov

.PHONY: lint-manifests
lint-manifests: $(STAMP) $(CHECKOV_STAMP) ## strict schema checks (K8s 1.31+), checkov and hadolint on rendered specs, k8s/ and docker/
	$(PY) -m pytest -q tests/unit/test_manifests_lint.py

.PHONY: lint-docker
lint-docker: $(STAMP) ## hadolint on docker/Dockerfile*
	$(VENV)/bin/hadolint docker/Dockerfile docker/Dockerfile.cpu

.PHONY: render-examples
render-examples: $(STAMP) ## regenerate k8s/overlays/examples/example-*.yaml from its specs/ (and the golden files)
	@for spec in k8s/overlays/examples/specs/*.yaml; do \
	  name=$$(basename $$spec); \
	  { echo "# Generated by \`make render-examples\` from k8s/overlays/examples/specs/$$name: do not edit."; \
	    $(PY) -m jobs render $$spec; } > k8s/overlays/examples/$$name || exit 1; \
	done
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/unit/test_jobs_render.py -k golden

.PHONY: image
image: ## build the GPU trainer image (IMAGE=kubetrain-trainer:0.1.0) with docker, podman or buildah, whichever is here
	bash docker/build.sh gpu --tag $(IMAGE) $(if $(BASE_IMAGE),--base $(BASE_IMAGE)) $(if $(IMAGE_ARCHIVE),--archive $(IMAGE_ARCHIVE))

.PHONY: image-cpu
image-cpu: ## build the CPU trainer image for kind/minikube (IMAGE_CPU=kubetrain-trainer-cpu:0.1.0; BASE_IMAGE=, IMAGE_ARCHIVE=FILE.tar)
	bash docker/build.sh cpu --tag $(IMAGE_CPU) $(if $(BASE_IMAGE),--base $(BASE_IMAGE)) $(if $(IMAGE_ARCHIVE),--archive $(IMAGE_ARCHIVE))

.PHONY: image-archives
image-archives: $(STAMP) ## CPU trainer + fake-gcs images from local stand-ins of their bases (podman, no registry), as archives for `ctr -n k8s.io images import`
	@$(PY) -m tests.image.images archives

.PHONY: kind-up
kind-up: ## create a kind cluster (KIND_CLUSTER=kubetrain; needs Docker and kind)
	@command -v kind >/dev/null || { echo "install kind: https://kind.sigs.k8s.io"; exit 1; }
	@kind get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER) --wait 120s

.PHONY: kind-load
kind-load: ## build the CPU image and load it into the kind cluster's node (docker or podman)
	bash docker/build.sh cpu --tag $(IMAGE_CPU) --archive runs/images/kubetrain-trainer-cpu.tar
	kind load image-archive runs/images/kubetrain-trainer-cpu.tar --name $(KIND_CLUSTER)

.PHONY: kind-deploy
kind-deploy: ## apply k8s/overlays/kind (namespace, accounts, RBAC, in-cluster object store, examples)
	kubectl --context $(KIND_CONTEXT) apply -k k8s/overlays/kind
	kubectl --context $(KIND_CONTEXT) -n kubetrain rollout status deployment/fake-gcs --timeout 180s

.PHONY: kind-submit
kind-submit: $(STAMP) kind-deploy ## submit examples/kind.yaml to the kind cluster
	$(PY) -m jobs submit examples/kind.yaml --context $(KIND_CONTEXT)

.PHONY: kind-follow
kind-follow: $(STAMP) ## follow the example's logs until it ends, then report how it ended
	$(PY) -m jobs logs digits-kind -n kubetrain --context $(KIND_CONTEXT) -f
	$(PY) -m jobs wait digits-kind -n kubetrain --context $(KIND_CONTEXT) --timeout 60

.PHONY: kind-down
kind-down: ## delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

.PHONY: clean
clean: ## remove the virtualenv and local runs
	rm -rf $(VENV) runs

# quiesce — the one entry point. `make help` lists the targets.
#
#   make test    fmt check, clippy -D warnings, unit + integration tests, the apiserver check of
#                the CRD and examples, then the e2e suite on a local cluster (what CI runs)
#   make demo    a cluster with the demo app rolling under load, without and with quiesce
#   make bench   the benchmark table of docs/benchmarks.md

SHELL := bash
CARGO ?= cargo
GO ?= go
CRD := crds/rolloutpolicies.quiesce.dev.yaml
EXAMPLES := examples/rolloutpolicy.yaml $(sort $(wildcard examples/valid/*.yaml examples/invalid/*.yaml))

.DEFAULT_GOAL := help

# cluster-up, cluster-down, cluster-status, images, e2e (owned by e2e/cluster).
include e2e/cluster/cluster.mk

.PHONY: help fmt lint unit crds crd-check crd-validate test

help:
	@echo "make test          lint + unit + crd-validate, then the e2e suite (CI: .ci/run)"
	@echo "make fmt           cargo fmt"
	@echo "make lint          cargo fmt --check; cargo clippy --workspace --all-targets (cluster tests too) -D warnings; cargo doc -D warnings"
	@echo "make unit          unit and loopback integration tests (no cluster)"
	@echo "make crds          regenerate $(CRD) and the chart's copy from the Rust types"
	@echo "make crd-check     fail when the committed CRD YAML differs from the types"
	@echo "make crd-validate  the apiserver's own validation of the CRD and examples (needs Go)"
	@echo "make cluster-up | cluster-down | cluster-status | images | e2e"
	@echo "make e2e-kind      the smoke, sidecar, operator and registry tests on a kind cluster"
	@echo "make images-push   REGISTRY=host[/path]|cluster [TAG=]: images and chart to a registry"
	@echo "make demo          a rolling update under load without and with quiesce (e2e/demo.sh)"
	@echo "make bench         the benchmark table (markdown) of docs/benchmarks.md"
	@echo "make bench-proxy   proxy overhead on loopback: quiesce vs nginx vs HAProxy (no cluster)"
	@echo "make bench-footprint  image sizes and the sidecar's RSS on loopback (no cluster)"
	@echo "make bench-cache   heap bytes of the operator's pod and Deployment caches, full vs cached"
	@echo "make bench-scale   the operator with thousands of pods and policies (kwok nodes)"
	@echo "make bench-webhook what one admission costs the webhook (no cluster)"
	@echo "make api-docs      regenerate docs/api.md from the CRD"
	@echo "make fuzz          the property tests of the parsers, FUZZ_SECONDS (600) per target"
	@echo "make plugin        build kubectl-quiesce and install it into PLUGIN_DIR ($(PLUGIN_DIR))"

fmt:
	$(CARGO) fmt --all

# `kubectl quiesce ...`: kubectl finds any `kubectl-*` executable on the PATH.
PLUGIN_DIR ?= $(HOME)/.local/bin
.PHONY: plugin
plugin:
	$(CARGO) build --release --locked -p quiesce-kubectl
	install -D -m 0755 "$${CARGO_TARGET_DIR:-target}/release/kubectl-quiesce" "$(PLUGIN_DIR)/kubectl-quiesce"
	@echo "installed $(PLUGIN_DIR)/kubectl-quiesce: run 'kubectl quiesce --help' (with $(PLUGIN_DIR) on the PATH)"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features quiesce-e2e/cluster -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --quiet

# The e2e crate's cluster tests are built only with its `cluster` feature (`make e2e`); its
# library (load generator) and binaries are unit-tested here.
unit:
	$(CARGO) test --workspace

crds:
	$(CARGO) run -q -p quiesce-api --bin crdgen

crd-check:
	$(CARGO) test -q -p quiesce-api --test crd -- committed_crd_yaml_matches_the_types

# Runs k8s.io/apiextensions-apiserver's CRD validation (structural schema, CEL compilation and
# cost budget) and its custom-resource validation on every example, offline. Go modules come
# from the Go module proxy or the module cache the local cluster build fills.
crd-validate:
	@if ! command -v $(GO) >/dev/null; then \
	  echo "crd-validate: skipped, '$(GO)' not found (the e2e suite checks the same on a real apiserver)"; \
	else \
	  cd operator/api/apiserver-check && GOFLAGS=-mod=mod GOTOOLCHAIN=local \
	    $(GO) run . $(abspath $(CRD) $(EXAMPLES)); \
	fi

test: lint unit crd-validate
	$(MAKE) e2e

# The cluster rule (KUBECONFIG, kind or the local cluster), images and `helm install` are in
# e2e/demo.sh; ARGS go to the binary (`make bench ARGS="--rate 100"`).
.PHONY: demo bench bench-proxy bench-scale
demo:
	@e2e/demo.sh demo $(ARGS)

bench:
	@e2e/demo.sh bench $(ARGS)

# The "Operator at scale" table of docs/benchmarks.md: kwok's simulated nodes and pods on the
# development cluster, thousands of Deployments and policies (`ARGS="--deployments 10,30"`).
bench-scale:
	@e2e/demo.sh bench-scale $(ARGS)

# The "Proxy overhead" tables of docs/benchmarks.md: on loopback, no cluster. Installs hey
# (tools.sh), nginx and HAProxy (Debian packages), builds the release binaries as
# e2e/cluster/images.sh does (`images.sh binaries`), then runs e2e/src/bin/proxybench/; ARGS go to
# it (`make bench-proxy ARGS="--rounds 1 --hey-only"`). Markdown on stdout, progress on stderr.
BENCH_TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(HOME)/.cache/quiesce/cargo-target)
bench-proxy:
	@e2e/cluster/tools.sh >&2
	@e2e/bench/proxy-deps.sh >&2
	@CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) e2e/cluster/images.sh binaries
	@RUSTFLAGS="$$(e2e/cluster/images.sh rustflags)" CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) \
	  $(CARGO) build --release --locked --target x86_64-unknown-linux-gnu --bin proxybench >&2
	@$(BENCH_TARGET_DIR)/x86_64-unknown-linux-gnu/release/proxybench $(ARGS)

# The "Image sizes and sidecar memory" table of docs/benchmarks.md: builds the images
# (e2e/cluster/images.sh), then their archive and gzip sizes and the sidecar's RSS on loopback.
.PHONY: bench-footprint
bench-footprint:
	@CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) e2e/cluster/images.sh build >&2
	@CARGO_TARGET_DIR=$(BENCH_TARGET_DIR) e2e/bench/footprint.sh $(ARGS)

# The "Operator cache footprint" table of docs/benchmarks.md: heap bytes of the leader's pod and
# Deployment caches, full objects against the slimmed ones it keeps (no cluster).
.PHONY: bench-cache
bench-cache:
	@$(CARGO) run --release --locked -p quiesce-operator --example cache_footprint

# The webhook's cost per admission without a cluster (docs/benchmarks.md, "The webhook's tail").
.PHONY: bench-webhook
bench-webhook:
	@$(CARGO) run --release --locked -p quiesce-operator --example webhook_cost

# docs/api.md from the CRD (a unit test of the e2e crate fails when it drifts).
.PHONY: api-docs
api-docs:
	$(CARGO) run -q -p quiesce-e2e --bin docgen

# The property tests of every parser of outside input (docs/security.md, "Fuzzing"), for long:
# each target runs for FUZZ_SECONDS in rounds of FUZZ_CASES cases, every round with a fresh
# random seed, and stops at the first failure (proptest saves the failing case in the test
# file's .proptest-regressions). `make unit` runs the same tests with small case counts.
# One target: `make fuzz FUZZ_TARGETS=quiesce-operator:inject_prop:inject_gives_a_valid_patch_and_a_working_sidecar`.
FUZZ_SECONDS ?= 600
FUZZ_CASES ?= 5000
FUZZ_SIDECAR := proc_tcp_table_round_trips proc_tcp_table_skips_garbage_lines \
  proc_tcp_table_never_panics proc_tcp_fields_never_panic snmp_passive_opens \
  sock_diag_reply_round_trips sock_diag_reply_never_panics tcp_info_fields \
  grpc_health_response_round_trips grpc_health_response_never_panics grpc_health_request_frames \
  sidecar_config_is_valid_or_a_clear_error
FUZZ_TARGETS ?= $(addprefix quiesce-sidecar:parsers_prop:,$(FUZZ_SIDECAR)) \
  quiesce-api:drain_report_prop:condition_message_round_trips \
  quiesce-api:drain_report_prop:any_message_is_a_report_or_none \
  quiesce-operator:inject_prop:inject_gives_a_valid_patch_and_a_working_sidecar \
  quiesce-operator:inject_prop:admission_always_answers_with_an_applicable_patch \
  quiesce-operator:inject_prop:drain_report_from_any_condition
.PHONY: fuzz
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  IFS=: read -r pkg bin test <<<"$$t"; \
	  $(CARGO) test -q -p $$pkg --test $$bin --no-run 2>/dev/null || exit 1; \
	  start=$$SECONDS; rounds=0; \
	  while [ $$((SECONDS - start)) -lt $(FUZZ_SECONDS) ]; do \
	    if ! out=$$(PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -q -p $$pkg --test $$bin -- --exact $$test 2>&1); then \
	      echo "$$out"; echo "fuzz: $$test FAILED after $$((rounds * $(FUZZ_CASES))) cases"; exit 1; \
	    fi; \
	    grep -q " 1 passed" <<<"$$out" || { echo "fuzz: no test $$bin::$$test"; exit 1; }; \
	    rounds=$$((rounds + 1)); \
	  done; \
	  echo "fuzz: $$test: $$((rounds * $(FUZZ_CASES))) cases in $$((SECONDS - start)) s, no failure"; \
	done

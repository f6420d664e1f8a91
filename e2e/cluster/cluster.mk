# Cluster targets (owned by e2e/cluster). Included by the top-level Makefile.
CLUSTER ?= e2e/cluster/cluster.sh

.PHONY: cluster-up cluster-down cluster-status images images-push e2e e2e-kind
cluster-up:
	$(CLUSTER) up
cluster-down:
	$(CLUSTER) down
cluster-status:
	$(CLUSTER) status
images:
	$(CLUSTER) images
e2e:
	$(CLUSTER) e2e

# The kind path users take, on a kind cluster (here: the offline one, kind/offline.sh): the
# smoke, sidecar, one operator and the registry test, then the kind cluster is torn down.
KIND_E2E_TESTS ?= cluster_smoke sidecar operator_rollout registry
e2e-kind:
	QUIESCE_CLUSTER_PROVIDER=kind E2E_TESTS="$(KIND_E2E_TESTS)" $(CLUSTER) e2e; \
	  rc=$$?; QUIESCE_CLUSTER_PROVIDER=kind $(CLUSTER) down; exit $$rc
# The images and the chart (an OCI artifact) to a registry, tagged with the workspace version
# (TAG overrides). REGISTRY=cluster: the development cluster's own registry (plain HTTP).
images-push:
	@test -n "$(REGISTRY)" || { echo "usage: make images-push REGISTRY=host[:port][/path]|cluster [TAG=...] [PLAIN_HTTP=1]" >&2; exit 2; }
	e2e/cluster/images.sh build
	QUIESCE_REGISTRY_PLAIN_HTTP=$(PLAIN_HTTP) e2e/cluster/images.sh push $(REGISTRY) $(TAG)

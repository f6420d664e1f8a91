# Cluster targets (owned by e2e/cluster). Included by the top-level Makefile.
CLUSTER ?= e2e/cluster/cluster.sh

.PHONY: cluster-up cluster-down cluster-status images e2e
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

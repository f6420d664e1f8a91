#!/usr/bin/env bash
# `make demo` and `make bench`: pick a cluster, build and load the images, install quiesce with
# Helm, then run the `demo` or `bench` binary of the e2e crate where the cluster is reachable.
#
#   e2e/demo.sh demo [ARGS...]     rolling update under load without and with quiesce
#   e2e/demo.sh bench [ARGS...]    the benchmark table (markdown on stdout)
#   e2e/demo.sh bench-scale [ARGS...]  the operator at scale on kwok's simulated nodes and pods
#
# Which cluster (the first rule that matches):
#   1. QUIESCE_CLUSTER_PROVIDER=local|kind is set: that provider's cluster (e2e/cluster/cluster.sh),
#      booted when it is not up.
#   2. KUBECONFIG is set: that cluster, as it is. Images: a `kind-NAME` context gets them with
#      `kind load`; any other cluster must already be able to pull them (push them yourself and set
#      QUIESCE_IMAGE_REGISTRY/QUIESCE_IMAGE_TAG, plus QUIESCE_SKIP_IMAGES=1). ~/.kube/config alone
#      is never used: a demo does not install itself into whatever cluster you last talked to.
#   3. Otherwise what cluster.sh picks: kind when a Docker engine answers and `kind` is installed,
#      else the local cluster (host processes in an isolated network namespace; needs root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cluster="$here/cluster/cluster.sh"
cmd=${1:-demo}
shift || true
case "$cmd" in demo | bench | bench-scale) ;; *) echo "usage: $0 demo|bench|bench-scale [ARGS...]" >&2; exit 2 ;; esac

log() { printf '[%s %s] %s\n' "$cmd" "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

REGISTRY="${QUIESCE_IMAGE_REGISTRY:-quiesce.local}"
TAG="${QUIESCE_IMAGE_TAG:-dev}"
CACHE="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
NAMESPACE=quiesce-system

"$here/cluster/tools.sh" >/dev/null
export PATH="$root/.tools/bin:$PATH"

if [ -n "${QUIESCE_CLUSTER_PROVIDER:-}" ] || [ -z "${KUBECONFIG:-}" ]; then
  mode=provider
  provider=$("$cluster" provider)
  log "cluster: the $provider provider's cluster (e2e/cluster/cluster.sh)"
  if "$cluster" status >/dev/null 2>&1; then
    log "cluster is up"
  else
    log "booting the $provider cluster (the first time builds Kubernetes: several minutes)"
    "$cluster" up
  fi
  in_cluster() { "$cluster" exec "$@"; }
else
  mode=kubeconfig
  context=$(kubectl config current-context)
  log "cluster: KUBECONFIG=$KUBECONFIG, context $context"
  kubectl version >/dev/null 2>&1 || die "the cluster of context $context does not answer"
  in_cluster() { "$@"; }
fi

if [ -n "${QUIESCE_SKIP_IMAGES:-}" ]; then
  log "images: skipped (QUIESCE_SKIP_IMAGES), using $REGISTRY/*:$TAG"
elif [ "$mode" = provider ]; then
  log "images: building (static release binaries; minutes the first time) and loading"
  "$cluster" images
elif [[ "$context" == kind-* ]]; then
  log "images: building and loading into kind cluster ${context#kind-}"
  "$here/cluster/images.sh" build
  for tar in "$CACHE"/images/project/*.tar; do kind load image-archive "$tar" --name "${context#kind-}"; done
else
  die "cannot load images into context $context: push $REGISTRY/{operator,sidecar,demo-app}:$TAG \
where it can pull them and set QUIESCE_SKIP_IMAGES=1"
fi

# A reloaded image keeps its tag: the archive's time in a pod annotation restarts the operator
# when the image changed (the same stamp as the e2e suite's install, e2e/src/chart.rs, so the two
# do not restart each other's operator). An existing release keeps its other values, and values
# this chart version added take their defaults (--reset-then-reuse-values; --reuse-values would
# leave them empty); the chart
# wins over hand edits of its objects (`kubectl set env` on the operator: --force-conflicts).
stamp=$(stat -c %Y "$CACHE/images/project/operator.tar" 2>/dev/null || echo unknown)
reuse=()
if in_cluster helm status quiesce --namespace "$NAMESPACE" >/dev/null 2>&1; then reuse=(--reset-then-reuse-values); fi
log "installing quiesce: helm upgrade --install quiesce charts/quiesce -n $NAMESPACE --wait"
in_cluster helm upgrade --install quiesce "$root/charts/quiesce" --namespace "$NAMESPACE" \
  --create-namespace --wait --timeout 5m --force-conflicts "${reuse[@]}" \
  --set operator.image.repository="$REGISTRY/operator" --set operator.image.tag="$TAG" \
  --set sidecar.image.repository="$REGISTRY/sidecar" --set sidecar.image.tag="$TAG" \
  --set-string operator.podAnnotations.quiesce\\.dev/image-stamp="$stamp" >/dev/null
in_cluster kubectl -n "$NAMESPACE" rollout status deployment --timeout 180s >/dev/null
log "quiesce is installed"

# Built here (the local cluster's namespace has no route to crates.io), run there.
binary=$cmd
[ "$cmd" = bench-scale ] && binary=scalebench
log "building the $binary binary"
(cd "$root" && cargo build -q --locked -p quiesce-e2e --bin "$binary")
bin=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/$binary

if [ "$cmd" = bench-scale ]; then
  # kwok plays the nodes (annotation kwok.x-k8s.io/node=fake) and their pods' lifecycle, with
  # kwok's own node stages and its pod stages except pod-ready, which here leaves quiesce's
  # readiness gate alone (e2e/bench/kwok/pod-ready.yaml). Node address: the real node's (an
  # address of the cluster's network, which nothing dials for these nodes); pod addresses from a
  # range no route leads to (no Service selects the benchmark's pods).
  "$here/cluster/tools.sh" kwok >/dev/null
  source "$here/cluster/versions.env"
  stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  node_ip=$(in_cluster kubectl get nodes -l '!type' \
    -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
  log "starting kwok (node address $node_ip)"
  in_cluster sh -c 'exec "$0" --kubeconfig "$KUBECONFIG" "$@"' "$root/.tools/bin/kwok" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip "$node_ip" --cidr 10.248.0.0/16 --node-lease-duration-seconds 40 \
    -c "$stages/node/fast/node-initialize.yaml" \
    -c "$stages/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    -c "$here/bench/kwok/pod-ready.yaml" -c "$stages/pod/fast/pod-delete.yaml" \
    >"${TMPDIR:-/tmp}/quiesce-kwok.log" 2>&1 &
  # The wrappers in between (cluster.sh, nsenter) do not pass signals on: stop kwok itself.
  trap 'pkill -f "^$root/.tools/bin/kwok --kubeconfig" || true' EXIT
fi
log "running $binary"
in_cluster env QUIESCE_IMAGE_REGISTRY="$REGISTRY" QUIESCE_IMAGE_TAG="$TAG" "$bin" "$@"

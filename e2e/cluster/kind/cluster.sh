#!/usr/bin/env bash
# The "kind" cluster provider: same contract as local/cluster.sh, backed by `kind` on Docker.
#
# With a Docker engine (the user's, at DOCKER_HOST or the default socket): kind's own node image
# (kindest/node, pulled). Without one, or with QUIESCE_KIND_OFFLINE=1: offline.sh, a private
# Docker engine confined to its own network namespace and a node image built here from Debian's
# packages and the project's Kubernetes binaries (no registry needed; e2e/cluster/README.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${QUIESCE_KIND_OFFLINE:-}" ] || ! docker info >/dev/null 2>&1; then
  exec "$here/offline.sh" "$@"
fi
root=$(cd "$here/../../.." && pwd)
NAME="${QUIESCE_KIND_NAME:-quiesce}"
STATE="${QUIESCE_STATE:-$HOME/.cache/quiesce/kind}"
export KUBECONFIG="$STATE/kubeconfig"
KIND="${KIND:-kind}"

ensure_kind() {
  command -v "$KIND" >/dev/null && return 0
  # kind is a Go module; installed into the project's tools directory.
  GOBIN="$root/.tools/bin" go install sigs.k8s.io/kind@v0.29.0
  KIND="$root/.tools/bin/kind"
}

running() { grep -qx "$NAME" <<<"$("$KIND" get clusters 2>/dev/null)"; }

case "${1:-}" in
  up)
    ensure_kind; "$here/../tools.sh" >/dev/null
    mkdir -p "$STATE"
    if running; then "$KIND" export kubeconfig --name "$NAME" --kubeconfig "$KUBECONFIG"; exit 0; fi
    "$KIND" create cluster --name "$NAME" --config "$here/kind-config.yaml" \
      --kubeconfig "$KUBECONFIG" --wait 120s
    ;;
  down) ensure_kind; running && "$KIND" delete cluster --name "$NAME"; rm -rf "$STATE" ;;
  status)
    ensure_kind; running || { echo "kind cluster $NAME: absent"; exit 1; }
    echo "kind cluster $NAME"; "$root/.tools/bin/kubectl" get nodes ;;
  kubeconfig) echo "$KUBECONFIG" ;;
  exec) shift; export PATH="$root/.tools/bin:$PATH"; exec "$@" ;;
  load-image)
    ensure_kind
    "$KIND" load image-archive "$2" --name "$NAME" ;;
  pause-apiserver) # SECONDS: freeze the kube-apiserver in the node container
    node="$NAME-control-plane"
    trap 'docker exec "$node" pkill -CONT -x kube-apiserver || true' EXIT
    docker exec "$node" pkill -STOP -x kube-apiserver; sleep "$2" ;;
  *) echo "usage: $0 up|down|status|kubeconfig|exec CMD...|load-image TAR|pause-apiserver SECONDS" >&2; exit 2 ;;
esac

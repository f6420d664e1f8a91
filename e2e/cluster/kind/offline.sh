#!/usr/bin/env bash
# The kind provider on a machine without a container registry or outside network: a private
# dockerd confined to network namespace $NETNS (docker.sh), a node image built locally
# (node-image.sh), and kind itself run inside that namespace, where the API server's port is
# published (on the namespace's 127.0.0.1). Same contract as local/cluster.sh and cluster.sh:
#
#   offline.sh up | down | status | kubeconfig | exec CMD... | load-image TAR
#              registry-up | registry-address | pause-apiserver SECONDS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
# shellcheck source=../versions.env
source "$here/../versions.env"
# shellcheck source=../registry.sh
source "$here/../registry.sh"
NAME="${QUIESCE_KIND_NAME:-quiesce-kind}"
NETNS="${QUIESCE_KIND_NETNS:-quiesce-kind}"
STATE="${QUIESCE_KIND_STATE:-/var/lib/quiesce-kind}"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
KIND="$root/.tools/bin/kind"
export KUBECONFIG="$STATE/kubeconfig"
eval "$("$here/docker.sh" env)"
export DOCKER_HOST
# What `exec` runs (the e2e suite) calls cluster.sh again: it must land here, not on the
# "user's Docker" path that the private engine at DOCKER_HOST would otherwise look like.
export QUIESCE_KIND_OFFLINE=1

# The image registry registry-up starts (Debian's docker-registry, plain HTTP), on the kind
# network's gateway address inside the namespace: the node pulls from it over the kind bridge,
# skopeo and helm reach it from the namespace, nothing outside can.
REGISTRY_ADDR=10.251.0.1:5000
REGISTRY_PID="$STATE/registry.pid"

log() { printf '[kind-offline %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
kind_() { in_ns "$KIND" "$@"; }

ensure_kind() {
  if [ -x "$KIND" ] && "$KIND" version | grep -q "kind $KIND_VERSION "; then return 0; fi
  GOBIN="$root/.tools/bin" GOFLAGS=-mod=mod go install "sigs.k8s.io/kind@$KIND_VERSION"
}

running() { [ -e "/run/netns/$NETNS" ] && grep -qx "$NAME" <<<"$(kind_ get clusters 2>/dev/null)"; }

cmd_up() {
  local t0; t0=$(date +%s)
  ensure_kind
  "$here/docker.sh" up
  if running; then kind_ export kubeconfig --name "$NAME" --kubeconfig "$KUBECONFIG" 2>/dev/null; log "already up"; return 0; fi
  "$here/node-image.sh" load
  # kind always bind-mounts the host's /lib/modules (read-only) into its nodes; this kernel has
  # none, and Docker would create the directory. We make it, and `down` removes it again.
  if [ ! -d /lib/modules ]; then mkdir /lib/modules && touch "$STATE/created-lib-modules"; fi
  local t1; t1=$(date +%s)
  kind_ create cluster --name "$NAME" --image "$("$here/node-image.sh" tag)" \
    --config "$here/kind-offline.yaml" --kubeconfig "$KUBECONFIG" --wait 120s
  # Pod and Service addresses reachable from the namespace (where the e2e suite and kubectl
  # run), through the node: routes via the kind bridge, which check-isolation accepts.
  local node_ip
  node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$NAME-control-plane")
  ip -n "$NETNS" route replace 10.244.0.0/16 via "$node_ip"
  ip -n "$NETNS" route replace 10.96.0.0/16 via "$node_ip"
  # kind's --wait covers the node only; Service addresses work once kube-proxy has synced.
  in_ns "$root/.tools/bin/kubectl" -n kube-system rollout status ds/kube-proxy --timeout 60s >/dev/null
  in_ns "$root/.tools/bin/kubectl" wait --for=create serviceaccount/default --timeout 60s >/dev/null
  "$here/docker.sh" check-isolation >/dev/null
  log "kind create took $(($(date +%s) - t1))s; up in $(($(date +%s) - t0))s; isolation re-checked"
  log "kubeconfig: $KUBECONFIG (reachable only inside netns $NETNS: '$0 exec kubectl ...')"
}

# Starts the registry inside the namespace (recorded; `down` stops it) and tells the node's
# containerd to pull from it over plain HTTP (hosts.toml under the config_path the kind config
# sets). Prints its address.
cmd_registry_up() {
  running || die "the kind cluster is not up"
  if ! { [ -f "$REGISTRY_PID" ] && kill -0 "$(cat "$REGISTRY_PID")" 2>/dev/null; }; then
    command -v docker-registry >/dev/null || "$here/../local/install-deps.sh"
    mkdir -p "$STATE/registry/data"
    registry_config "$REGISTRY_ADDR" "$STATE/registry/data" >"$STATE/registry/config.yml"
    setsid nsenter --net="/run/netns/$NETNS" -- docker-registry serve "$STATE/registry/config.yml" \
      >>"$STATE/registry.log" 2>&1 </dev/null &
    echo $! >"$REGISTRY_PID"
    local deadline=$(($(date +%s) + 30))
    until in_ns curl -sf "http://$REGISTRY_ADDR/v2/" >/dev/null; do
      [ "$(date +%s)" -lt "$deadline" ] || die "registry at $REGISTRY_ADDR did not answer (log: $STATE/registry.log)"
      sleep 0.3
    done
  fi
  local dir="/etc/containerd/certs.d/$REGISTRY_ADDR"
  registry_hosts_toml "$REGISTRY_ADDR" |
    docker exec -i "$NAME-control-plane" sh -c "mkdir -p '$dir' && cat >'$dir/hosts.toml'"
  echo "$REGISTRY_ADDR"
}

stop_registry() {
  [ -f "$REGISTRY_PID" ] || return 0
  kill "$(cat "$REGISTRY_PID")" 2>/dev/null || true
  rm -rf "$REGISTRY_PID" "$STATE/registry"
}

cmd_down() {
  stop_registry
  if [ -e "/run/netns/$NETNS" ] && running; then kind_ delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG"; fi
  "$here/docker.sh" down
  rm -f "$KUBECONFIG"
  if [ -f "$STATE/created-lib-modules" ]; then rmdir /lib/modules 2>/dev/null || true; rm -f "$STATE/created-lib-modules"; fi
}

cmd_status() {
  "$here/docker.sh" status || return 1
  running || { echo "kind cluster $NAME: absent"; return 1; }
  echo "kind cluster $NAME"
  in_ns "$root/.tools/bin/kubectl" get nodes -o wide
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) echo "$KUBECONFIG" ;;
  exec) shift; export PATH="$root/.tools/bin:$PATH"; in_ns "$@" ;;
  load-image) [ -n "${2:-}" ] || die "usage: $0 load-image TAR"; kind_ load image-archive "$2" --name "$NAME" ;;
  registry-up) cmd_registry_up ;;
  registry-address) echo "$REGISTRY_ADDR" ;;
  pause-apiserver) # SECONDS: freeze the kube-apiserver in the node container
    [ -n "${2:-}" ] || die "usage: $0 pause-apiserver SECONDS"
    node="$NAME-control-plane"
    trap 'docker exec "$node" pkill -CONT -x kube-apiserver || true' EXIT
    docker exec "$node" pkill -STOP -x kube-apiserver; sleep "$2" ;;
  *) echo "usage: $0 up|down|status|kubeconfig|exec CMD...|load-image TAR|registry-up|registry-address|pause-apiserver SECONDS" >&2; exit 2 ;;
esac

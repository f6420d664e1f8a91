#!/usr/bin/env bash
# One contract for every cluster provider:
#   cluster.sh up | down | status        boot, tear down, report
#   cluster.sh kubeconfig                print the kubeconfig path
#   cluster.sh exec CMD...               run CMD where the cluster is reachable (local: inside
#                                        its network namespace), with KUBECONFIG set
#   cluster.sh load-image TAR            load a docker-archive image into the node
#   cluster.sh images                    build the project images and load them
#   cluster.sh e2e                       up + images + the e2e suite
#   cluster.sh pause-apiserver SECONDS   freeze the kube-apiserver for SECONDS (outage tests)
# Provider: QUIESCE_CLUSTER_PROVIDER=local|kind. Default: kind when a Docker engine answers and
# `kind` is installed, else local (host processes, no Docker needed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

provider="${QUIESCE_CLUSTER_PROVIDER:-}"
if [ -z "$provider" ]; then
  if command -v kind >/dev/null && docker info >/dev/null 2>&1; then provider=kind; else provider=local; fi
fi
p="$here/$provider/cluster.sh"
[ -x "$p" ] || { echo "unknown cluster provider '$provider'" >&2; exit 2; }

load_project_images() {
  "$here/images.sh" build
  for tar in "${QUIESCE_CACHE:-$HOME/.cache/quiesce}"/images/project/*.tar; do
    "$p" load-image "$tar"
  done
}

run_e2e() {
  "$p" up
  load_project_images
  "$here/../../e2e/cluster/tools.sh" prometheus
  # E2E_TESTS="cluster_smoke sidecar": only those test binaries (default: all of them).
  local targets=(--tests)
  if [ -n "${E2E_TESTS:-}" ]; then
    targets=()
    for t in $E2E_TESTS; do targets+=(--test "$t"); done
  fi
  # Build outside the cluster's namespace (it has no route to crates.io), run inside it.
  (cd "$root" && cargo test --locked -p quiesce-e2e --features cluster "${targets[@]}" --no-run)
  (cd "$root" && "$p" exec env QUIESCE_E2E_PROVIDER="$provider" \
    cargo test --offline --locked --no-fail-fast -p quiesce-e2e --features cluster "${targets[@]}" -- --test-threads "${E2E_THREADS:-2}" "$@")
}

case "${1:-}" in
  images) load_project_images ;;
  e2e) shift; run_e2e "$@" ;;
  provider) echo "$provider" ;;
  *) exec "$p" "$@" ;;
esac

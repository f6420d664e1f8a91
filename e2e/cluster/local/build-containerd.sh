#!/usr/bin/env bash
# Builds containerd 2.x (containerd, containerd-shim-runc-v2, ctr) from its Go module at the
# pinned version into the cache, for Kubernetes releases that need containerd 2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../versions.env"
cache="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
out="$cache/containerd/$CONTAINERD_VERSION/bin"
cmds=(containerd containerd-shim-runc-v2 ctr)
missing=0
for c in "${cmds[@]}"; do [ -x "$out/$c" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "containerd $CONTAINERD_VERSION: cached in $out"; exit 0; fi
mkdir -p "$out"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0 GOBIN="$out" GOFLAGS=-mod=mod
start=$(date +%s)
pkg=github.com/containerd/containerd/v2
go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION" \
  "$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
  "$pkg/cmd/ctr@$CONTAINERD_VERSION"
echo "containerd $CONTAINERD_VERSION built in $(( $(date +%s) - start ))s into $out"

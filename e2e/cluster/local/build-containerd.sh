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
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0 GOFLAGS=-mod=mod
# `go install pkg@version` refuses modules with exclude directives: build in a wrapper module.
work="$cache/containerd/$CONTAINERD_VERSION/src"
mkdir -p "$work"
cd "$work"
pkg=github.com/containerd/containerd/v2
if [ ! -f go.mod ]; then
  go mod init quiesce.dev/containerd-build >/dev/null 2>&1
  printf '//go:build tools\n\npackage tools\n\nimport (\n' >tools.go
  for c in "${cmds[@]}"; do printf '\t_ "%s/cmd/%s"\n' "$pkg" "$c" >>tools.go; done
  printf ')\n' >>tools.go
  go get "$pkg@$CONTAINERD_VERSION" >/dev/null 2>&1
  go mod tidy -e >/dev/null 2>&1 || true
fi
start=$(date +%s)
for c in "${cmds[@]}"; do
  go build -trimpath -tags "tools no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION" -o "$out/$c" "$pkg/cmd/$c"
done
echo "containerd $CONTAINERD_VERSION built in $(( $(date +%s) - start ))s into $out"

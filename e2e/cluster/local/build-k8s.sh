#!/usr/bin/env bash
# Builds the Kubernetes components (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kubeadm) from the published Go modules at one pinned release, plus the
# pause binary, into a cache outside the work tree. Warm runs only check the cache.
#
# The published k8s.io/kubernetes module points its staging modules at ./staging/...; a wrapper
# module replaces each of them with its published v0.<minor>.<patch> version.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../versions.env"
cache="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
out="$cache/k8s/$K8S_VERSION/bin"
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubeadm)

missing=0
for c in "${components[@]}" pause; do [ -x "$out/$c" ] || missing=1; done
if [ "$missing" = 0 ]; then echo "k8s $K8S_VERSION: cached in $out"; exit 0; fi

export GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
work="$cache/k8s/$K8S_VERSION/src"
mkdir -p "$work" "$out"
cd "$work"
staging_version="v0.${K8S_VERSION#v1.}"
if [ ! -f tools.go ]; then # tools.go is written last: its presence means the module is complete
  rm -f go.mod go.sum
  go mod init quiesce.dev/k8s-build >/dev/null 2>&1
  info=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
  if grep -q '"Error"' <<<"$info"; then
    echo "cannot download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy:" >&2
    grep '"Error"' <<<"$info" >&2
    exit 1
  fi
  gomod=$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' <<<"$info")
  # Every staging module k8s.io/kubernetes replaces with a local path gets its published version.
  grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
    while read -r m; do echo "replace $m => $m $staging_version"; done >>go.mod
  echo "require k8s.io/kubernetes $K8S_VERSION" >>go.mod
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "${components[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } >tools.go.tmp
  mv tools.go.tmp tools.go
  go mod tidy -e >/dev/null 2>&1 || true
fi

minor=$(echo "$K8S_VERSION" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
start=$(date +%s)
for c in "${components[@]}"; do
  [ -x "$out/$c" ] && continue
  echo "building $c $K8S_VERSION ..."
  go build -trimpath -tags tools -ldflags "$ldflags" -o "$out/$c" "k8s.io/kubernetes/cmd/$c"
done

# The pause image's binary, from the same release's source (build/pause/linux/pause.c).
if [ ! -x "$out/pause" ]; then
  src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  gcc -Os -static -Wall -DVERSION="\"$K8S_VERSION\"" -o "$out/pause" "$src"
  strip "$out/pause"
fi
echo "k8s $K8S_VERSION built in $(( $(date +%s) - start ))s into $out"

#!/usr/bin/env bash
# Go binaries the kind node image needs that the local provider does not build: kubectl at the
# cluster's release (kind runs it inside the node; .tools/bin/kubectl is newer than the skew
# policy allows), crictl (kind's `load` asks the node's CRI about images), etcd and CoreDNS at the
# versions kubeadm pins (Debian's etcd is 3.4 and dynamically linked). All static (CGO off), from
# the Go module proxy, cached in $CACHE/bin-<k8s version>; warm runs only check the cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.env
source "$here/../versions.env"
CACHE="${QUIESCE_KIND_CACHE:-$HOME/.cache/quiesce/kind-node}"
K8S_SRC="${QUIESCE_CACHE:-$HOME/.cache/quiesce}/k8s/$K8S_VERSION/src"
out="$CACHE/bin-$K8S_VERSION"
kubeadm="${QUIESCE_CACHE:-$HOME/.cache/quiesce}/k8s/$K8S_VERSION/bin/kubeadm"
export GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0
mkdir -p "$out"

# Versions kubeadm will ask for (its image list), so the preloaded images match its manifests.
images=$("$kubeadm" config images list --kubernetes-version "$K8S_VERSION")
etcd_version=$(sed -n 's#.*/etcd:\([0-9.]*\)-.*#v\1#p' <<<"$images")
coredns_version=$(sed -n 's#.*/coredns:\(v[0-9.]*\)$#\1#p' <<<"$images")
# crictl: the proxy serves only some cri-tools releases (v1.34.0, v1.37.0; not v1.33.x). crictl
# only speaks the CRI v1 API to the node's containerd, so any recent release works.
crictl_version="${CRICTL_VERSION:-v1.34.0}"

# `go install module@version` refuses modules whose go.mod has replace directives (etcd's
# server/v3 does), so each is built from a throwaway wrapper module that requires it.
gobuild() { # name module version package
  local name=$1 mod=$2 ver=$3 pkg=$4 work t0
  [ -x "$out/$name" ] && return 0
  echo "building $name from $mod@$ver ..." >&2
  t0=$(date +%s)
  work="$CACHE/src-$name"
  rm -rf "$work" && mkdir -p "$work"
  (cd "$work" && go mod init "quiesce.dev/build-$name" >/dev/null 2>&1 &&
    go get "$mod@$ver" >/dev/null 2>&1 &&
    nice go build -trimpath -ldflags "-s -w" -o "$out/$name" "$pkg")
  rm -rf "$work"
  echo "built $name in $(($(date +%s) - t0))s" >&2
}

# `go install sigs.k8s.io/cri-tools/cmd/crictl@v` is refused by the proxy
# (403 on the sub-path): build the downloaded module's ./cmd/crictl (its zip has no vendor/modules.txt).
if [ ! -x "$out/crictl" ]; then
  dir=$(go mod download -json "sigs.k8s.io/cri-tools@$crictl_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$dir" ] || { echo "sigs.k8s.io/cri-tools@$crictl_version is not served" >&2; exit 1; }
  (cd "$dir" && nice go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out/crictl" ./cmd/crictl)
fi
gobuild etcd go.etcd.io/etcd/server/v3 "$etcd_version" go.etcd.io/etcd/server/v3
gobuild coredns github.com/coredns/coredns "$coredns_version" github.com/coredns/coredns

# kubectl: the local provider's wrapper module (k8s.io/kubernetes + published staging modules),
# copied so its go.mod is not touched; same ldflags as local/build-k8s.sh.
if [ ! -x "$out/kubectl" ]; then
  work="$CACHE/kubectl-src-$K8S_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  cp "$K8S_SRC/go.mod" "$K8S_SRC/go.sum" "$work/"
  printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubectl"\n' >"$work/tools.go"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "building kubectl $K8S_VERSION ..." >&2
  t0=$(date +%s)
  (cd "$work" && nice go build -trimpath -tags tools -ldflags "$ldflags" -o "$out/kubectl" k8s.io/kubernetes/cmd/kubectl)
  echo "built kubectl in $(($(date +%s) - t0))s" >&2
  rm -rf "$work"
fi
echo "$out"

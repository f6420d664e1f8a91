#!/usr/bin/env bash
# Container images without a registry: static Rust binaries put into FROM-scratch images by
# buildah from the Dockerfiles in the repo, saved as docker-archive tarballs in the cache and
# loaded into the cluster by the provider (`ctr images import` for local, `kind load` for kind).
#
#   images.sh build                 build the project images into $CACHE/images/project/
#   images.sh binaries              only their static binaries (in $CARGO_TARGET_DIR)
#   images.sh build-pause BIN REF TAR
#   images.sh rustflags             the RUSTFLAGS of the static binaries
#   images.sh version               the release version: the workspace's, the chart's appVersion
#   images.sh push REGISTRY [TAG]   push the built images and the chart (an OCI artifact) to
#                                   REGISTRY (host[:port][/path], or "cluster": the development
#                                   cluster's registry); TAG defaults to the version.
#                                   QUIESCE_REGISTRY_PLAIN_HTTP=1 for a registry without TLS.
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

# The workspace's version (Cargo.toml [workspace.package]): images and chart are released under it.
workspace_version() {
  awk '/^\[workspace.package\]/ {p = 1; next} /^\[/ {p = 0}
       p && $1 == "version" {gsub(/"/, "", $3); print $3; exit}' "$root/Cargo.toml"
}

# Pushes the images `build` wrote and the chart, packaged so that it installs them: its values
# name REGISTRY's images at TAG, its appVersion is TAG. No Docker: skopeo copies the archives.
push_release() { # registry [tag]
  local registry=${1:?usage: images.sh push REGISTRY [TAG]} tag=${2:-$(workspace_version)}
  if [ "$registry" = cluster ]; then
    # The development cluster's registry: reachable only inside the cluster's network.
    registry=$("$here/cluster.sh" registry-up)
    exec "$here/cluster.sh" exec env QUIESCE_REGISTRY_PLAIN_HTTP=1 "$0" push "$registry" "$tag"
  fi
  local tls=true helm_plain=()
  if [ -n "${QUIESCE_REGISTRY_PLAIN_HTTP:-}" ]; then tls=false helm_plain=(--plain-http); fi
  command -v skopeo >/dev/null || "$here/local/install-deps.sh"
  for spec in "${PROJECT_IMAGES[@]}"; do
    local name; name=$(cut -d: -f1 <<<"$spec")
    local tar="$CACHE/images/project/$name.tar"
    [ -f "$tar" ] || { log "ERROR: $tar missing: run 'images.sh build' first"; exit 1; }
    skopeo copy --quiet --dest-tls-verify="$tls" "docker-archive:$tar" \
      "docker://$registry/$name:$tag"
    log "pushed $registry/$name:$tag"
  done
  local helm="$root/.tools/bin/helm" pkg; pkg=$(mktemp -d)
  cp -r "$root/charts/quiesce" "$pkg/quiesce"
  # The two image references, rewritten in place (the rest of values.yaml, comments included,
  # stays as in the repository); `helm template` below proves the rewrite took.
  sed -i -E "s#^(    repository: )quiesce\.local/(operator|sidecar)\$#\1$registry/\2#;
    s#^(    tag: )dev\$#\1\"$tag\"#" "$pkg/quiesce/values.yaml"
  local rendered; rendered=$("$helm" template quiesce "$pkg/quiesce")
  for image in operator sidecar; do
    grep -q "$registry/$image:$tag\"" <<<"$rendered" ||
      { log "ERROR: the packaged chart does not name $registry/$image:$tag"; exit 1; }
  done
  local version; version=$(workspace_version)
  [[ "$tag" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] && version=$tag # a release tag is the chart's version too
  "$helm" package "$pkg/quiesce" --version "$version" --app-version "$tag" -d "$pkg" >/dev/null
  "$helm" push "${helm_plain[@]}" "$pkg/quiesce-$version.tgz" "oci://$registry/charts" >&2
  rm -rf "$pkg"
  log "pushed oci://$registry/charts/quiesce:$version (images $registry/*:$tag)"
}

case "${1:-}" in
  build) build_project ;;
  binaries) build_binaries ;;
  build-pause) shift; build_pause "$@" ;;
  list) ls "$CACHE/images/project/"*.tar ;;
  rustflags) echo "$STATIC_RUSTFLAGS" ;;
  version) workspace_version ;;
  push) shift; push_release "$@" ;;
  *) echo "usage: $0 build|binaries|build-pause BIN REF TAR|list|rustflags|version|push REGISTRY [TAG]" >&2; exit 2 ;;
esac

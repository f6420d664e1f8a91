#!/usr/bin/env bash
# Builds a kind node image on this machine, with no container registry: kindest/node cannot be
# pulled here, so we make what kind's `build node-image` would make, from local parts.
#
#   node-image.sh build     build (or find in the cache) the image tar; prints its path
#   node-image.sh load      build, then `docker load` it into the engine at $DOCKER_HOST
#   node-image.sh tag       print the image reference
#
# Parts: a Debian bookworm rootfs (debootstrap minbase from the apt mirror) with systemd,
# Debian's containerd + runc + CNI plugins, kind's node files (images/base/files of the kind
# module, which is kind's contract with its node image), the project's Kubernetes binaries, and
# the control-plane images kubeadm asks for, built as one-layer images from static binaries
# (build-node-bins.sh) and preloaded into the rootfs's containerd store (/var/lib/containerd,
# which kind's node keeps on its /var volume). No kindnetd image: the kind config disables the
# default CNI and the rootfs carries a bridge conflist instead (one node, pods on 10.244.0.0/24).
#
# Cached as $CACHE/node-<k8s version>-<hash of this script, mkimage.py, build-node-bins.sh>.tar.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.env
source "$here/../versions.env"
QCACHE="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
CACHE="${QUIESCE_KIND_CACHE:-$QCACHE/kind-node}"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
K8S_BIN="$QCACHE/k8s/$K8S_VERSION/bin"
WORK="${QUIESCE_KIND_STATE:-/var/lib/quiesce-kind}/node-build"
SUITE=bookworm
# The mirror apt is configured with (its deb822 sources); DEBIAN_MIRROR overrides.
MIRROR="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
TAG="quiesce.local/kind-node:$K8S_VERSION"
KEY=$(cat "$0" "$here/mkimage.py" "$here/build-node-bins.sh" | sha256sum | cut -c1-12)
OUT="$CACHE/node-$K8S_VERSION-$KEY.tar"
# kind's base image packages (images/base/Dockerfile), minus NFS/iSCSI, fuse-overlayfs and curl,
# plus Debian's containerd, runc and CNI plugins in place of the ones kind builds.
PKGS=systemd,dbus,conntrack,iptables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,procps,jq,ca-certificates,containerd,runc,containernetworking-plugins,socat

log() { printf '[node-image %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

make_rootfs() { # dir
  local rootfs=$1
  mkdir -p "$CACHE/debs"
  log "debootstrap $SUITE (minbase + $PKGS) from $MIRROR"
  debootstrap --variant=minbase --include="$PKGS" --cache-dir="$CACHE/debs" \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$rootfs"/usr/share/{doc,man,info,locale} "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
}

# The steps of kind's images/base/Dockerfile, on the rootfs.
install_kind_files() { # rootfs kind-module-dir
  local r=$1 files=$2/images/base/files
  install -m 0755 "$files"/usr/local/bin/* "$r/usr/local/bin/"
  mkdir -p "$r/kind/bin" "$r/etc/containerd" "$r/etc/default" "$r/etc/sysctl.d" \
    "$r/etc/systemd/system/kubelet.service.d" "$r/etc/kubernetes/manifests" "$r/opt/cni"
  install -m 0644 "$files"/kind/README.txt "$r/kind/"
  install -m 0755 "$files"/kind/bin/* "$r/kind/bin/"
  install -m 0644 "$files"/etc/crictl.yaml "$r/etc/"
  install -m 0644 "$files"/etc/containerd/config.toml "$r/etc/containerd/"
  install -m 0644 "$files"/etc/default/kubelet "$r/etc/default/"
  install -m 0644 "$files"/etc/sysctl.d/* "$r/etc/sysctl.d/"
  find "$files/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$r/etc/systemd/system/" \;
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
  rm -f "$r/etc/systemd/system/containerd-fuse-overlayfs.service"
  find "$r/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
    "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
    "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
  ln -sf /usr/lib/systemd/systemd "$r/sbin/init"
  # Debian's containerd lives in /usr/bin. This machine withholds CAP_SYS_RESOURCE: systemd
  # cannot give containerd OOMScoreAdjust=-999, and runc cannot lower a container's
  # oom_score_adj (restrict_oom_score_adj, as kind does for rootless nodes).
  sed -i -e 's#/usr/local/bin/containerd#/usr/bin/containerd#' -e '/^OOMScoreAdjust/d' \
    "$r/etc/systemd/system/containerd.service"
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$r/etc/containerd/config.toml"
  # kind's cri-base.json: containerd's default spec, plus the product-files hook, minus rlimits.
  chroot "$r" ctr oci spec |
    jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$r/etc/containerd/cri-base.json"
  chroot "$r" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  chroot "$r" systemctl mask systemd-binfmt.service >/dev/null 2>&1
  # CNI: Debian's plugins under the path kind and containerd expect; one bridge network.
  ln -sfn /usr/lib/cni "$r/opt/cni/bin"
  mkdir -p "$r/etc/cni/net.d"
  cat >"$r/etc/cni/net.d/10-kind-bridge.conflist" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "kind-bridge",
  "plugins": [
    {
      "type": "bridge", "bridge": "kind-cni0", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

install_k8s() { # rootfs bins-dir
  local r=$1 bins=$2 b
  for b in kubeadm kubelet; do install -m 0755 "$K8S_BIN/$b" "$r/usr/bin/"; done
  install -m 0755 "$bins/kubectl" "$r/usr/bin/"
  install -m 0755 "$bins/crictl" "$r/usr/local/bin/"
  printf '%s' "$K8S_VERSION" >"$r/kind/version"
}

# One-layer images for what `kubeadm config images list` names, into $WORK/images/*.tar.
build_cp_images() { # rootfs bins-dir
  local r=$1 bins=$2 dir=$WORK/images ref name
  mkdir -p "$dir"
  while read -r ref; do
    name=$(basename "${ref%%:*}")
    rm -rf "${dir:?}/$name" && mkdir -p "$dir/$name/usr/local/bin" "$dir/$name/tmp" && chmod 1777 "$dir/$name/tmp"
    case "$name" in
      kube-apiserver | kube-controller-manager | kube-scheduler)
        cp "$K8S_BIN/$name" "$dir/$name/usr/local/bin/"
        python3 "$here/mkimage.py" "$dir/$name" "$ref" "$dir/$name.tar" --entrypoint "[\"/usr/local/bin/$name\"]" ;;
      kube-proxy)
        cp "$K8S_BIN/$name" "$dir/$name/usr/local/bin/"
        add_iptables "$r" "$dir/$name"
        python3 "$here/mkimage.py" "$dir/$name" "$ref" "$dir/$name.tar" --entrypoint '["/usr/local/bin/kube-proxy"]' ;;
      etcd)
        cp "$bins/etcd" "$dir/$name/usr/local/bin/"
        python3 "$here/mkimage.py" "$dir/$name" "$ref" "$dir/$name.tar" --entrypoint '["/usr/local/bin/etcd"]' ;;
      coredns)
        cp "$bins/coredns" "$dir/$name/coredns"
        python3 "$here/mkimage.py" "$dir/$name" "$ref" "$dir/$name.tar" --entrypoint '["/coredns"]' ;;
      pause)
        local pause_tar="$QCACHE/images/pause-$K8S_VERSION.tar"
        [ -f "$pause_tar" ] || "$here/../images.sh" build-pause "$K8S_BIN/pause" "$ref" "$pause_tar"
        cp "$pause_tar" "$dir/$name.tar" ;;
      *) die "no recipe for image $ref" ;;
    esac
    rm -rf "${dir:?}/$name"
  done < <("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION")
}

# kube-proxy (iptables mode) runs iptables-restore and friends: the nft flavour (the node's
# entrypoint picks nft, because the rules Docker writes into the node are nft ones), its
# extensions and the shared libraries they load, copied from the rootfs.
add_iptables() { # rootfs image-dir
  local r=$1 d=$2 f lib
  mkdir -p "$d/usr/sbin" "$d/etc"
  cp -a "$r/usr/sbin/xtables-nft-multi" "$r/usr/sbin/conntrack" "$d/usr/sbin/"
  for f in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$d/usr/sbin/$f"
  done
  (cd "$r" && cp -a --parents usr/lib/x86_64-linux-gnu/xtables "$d/")
  cp "$r/etc/protocols" "$r/etc/ethertypes" "$d/etc/" 2>/dev/null || true
  for f in "$r"/usr/sbin/xtables-nft-multi "$r"/usr/sbin/conntrack "$r"/usr/lib/x86_64-linux-gnu/xtables/*.so; do
    chroot "$r" ldd "${f#"$r"}" 2>/dev/null | grep -oE '/[^ ]+' || true
  done | sort -u | while read -r lib; do
    (cd "$r" && cp -aL --parents ".$lib" "$d/")
  done
}

# kind's build imports images into a containerd running in its build container; we run Debian's
# containerd (the node's own version) on the host with the rootfs's /var/lib/containerd as its
# root, in a fresh network namespace with nothing in it, and import with kind's flags.
preload_images() { # rootfs
  local r=$1 st=$WORK/containerd pid tar i
  mkdir -p "$st"
  cat >"$st/config.toml" <<EOF
version = 2
root = "$r/var/lib/containerd"
state = "$st/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$st/containerd.sock"
[ttrpc]
  address = "$st/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$st/opt"
EOF
  [ -f "$st/config.toml" ] || die "no build containerd config"
  unshare --net -- /usr/bin/containerd --config "$st/config.toml" >"$st/log" 2>&1 &
  pid=$!
  for i in $(seq 100); do
    ctr --address "$st/containerd.sock" version >/dev/null 2>&1 && break
    if [ "$i" = 100 ] || ! kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true; tail "$st/log" >&2; die "build containerd did not start"
    fi
    sleep 0.2
  done
  for tar in "$WORK"/images/*.tar; do
    ctr --address "$st/containerd.sock" -n k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack --digests "$tar" >/dev/null
  done
  ctr --address "$st/containerd.sock" -n k8s.io images ls -q >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$r/var/lib/containerd/tmpmounts"
}

cmd_build() {
  if [ -f "$OUT" ] && [ "${REBUILD:-0}" != 1 ]; then echo "$OUT"; return 0; fi
  [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
  local t0 bins kind_dir rootfs
  t0=$(date +%s)
  command -v debootstrap >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  bins=$("$here/build-node-bins.sh" | tail -n1)
  kind_dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$kind_dir/images/base/files" ] || die "kind $KIND_VERSION's module has no images/base/files"
  rm -rf "$WORK" && mkdir -p "$WORK" "$CACHE"
  rootfs="$WORK/rootfs"
  make_rootfs "$rootfs"
  log "rootfs done ($(du -sh "$rootfs" | cut -f1)); kind files, Kubernetes $K8S_VERSION"
  install_kind_files "$rootfs" "$kind_dir"
  install_k8s "$rootfs" "$bins"
  log "control-plane images"
  build_cp_images "$rootfs" "$bins"
  preload_images "$rootfs"
  log "writing $TAG ($(du -sh "$rootfs" | cut -f1))"
  python3 "$here/mkimage.py" "$rootfs" "$TAG" "$OUT" \
    --entrypoint '["/usr/local/bin/entrypoint", "/sbin/init"]' --stop-signal SIGRTMIN+3 \
    --env container=docker --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --exclude dev --exclude proc --exclude sys --exclude run --exclude tmp
  rm -rf "$WORK"
  # Builds of this version by other revisions of this script are superseded.
  find "$CACHE" -maxdepth 1 -name "node-$K8S_VERSION-*.tar" ! -name "$(basename "$OUT")" -delete
  log "built $OUT ($(du -h "$OUT" | cut -f1)) in $(($(date +%s) - t0))s"
  echo "$OUT"
}

cmd_load() {
  local tar want have
  tar=$(cmd_build)
  [ -n "${DOCKER_HOST:-}" ] || die "DOCKER_HOST is not set: eval \"\$(docker.sh env)\""
  # The image ID is the config digest: equal IDs mean the cached tar is already loaded.
  want=$(tar -xOf "$tar" manifest.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Config"].split(".")[0])')
  have=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
  if [ "$have" = "sha256:$want" ]; then log "$TAG already loaded"; return 0; fi
  log "docker load $tar"
  docker load -i "$tar" >/dev/null
}

case "${1:-}" in
  build) cmd_build ;;
  load) cmd_load ;;
  tag) echo "$TAG" ;;
  *) echo "usage: $0 build|load|tag" >&2; exit 2 ;;
esac

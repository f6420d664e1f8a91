#!/usr/bin/env bash
# Installs the host packages the local cluster needs, from Debian, only when missing.
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables conntrack etcd-server buildah
  iproute2 procps util-linux socat curl skopeo docker-registry)
missing=()
for p in "${pkgs[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting the distro's own containerd, etcd and registry services:
# the cluster starts its own, inside its network namespace.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1; fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ "$created_policy" = 1 ] && rm -f "$policy"
exit 0

#!/usr/bin/env bash
# Installs what `make bench-proxy` compares the sidecar's proxy mode with: nginx and HAProxy
# from the Debian packages, each skipped when its binary is already there. Only the binaries are
# used: the bench runs them in the foreground with its own config files in a temporary folder
# (listening on 127.0.0.1), so no system service is started or enabled here. `hey` comes from
# e2e/cluster/tools.sh (the Makefile target runs both).
set -euo pipefail

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "proxy-deps.sh: apt-get not found; install nginx and haproxy by hand" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
# Package scripts must not start the services they install (policy-rc.d 101 = "not allowed").
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
own_policy=false
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  own_policy=true
fi
cleanup() { if $own_policy; then "${sudo[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT
"${sudo[@]}" apt-get update -q
pkgs=()
for p in "${missing[@]}"; do
  # nginx-light is gone from newer Debian releases: fall back to nginx.
  if [ "$p" = nginx-light ] && ! apt-cache show nginx-light >/dev/null 2>&1; then p=nginx; fi
  pkgs+=("$p")
done
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}"
echo "proxy-deps.sh: installed ${pkgs[*]}" >&2

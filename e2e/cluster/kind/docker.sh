#!/usr/bin/env bash
# A private Docker engine for the kind provider, confined to its own network namespace.
#
#   docker.sh up | down | status | env | check-isolation
#
# dockerd (Debian's docker.io, with the containerd it supervises) runs inside the network
# namespace $NETNS, which has a loopback and the bridges Docker makes, no link to the host and
# no default route: containers, their published ports and dockerd's own dials cannot reach
# anything outside the namespace. dockerd shares the host's mount namespace (nsenter --net only;
# `ip netns exec` would remount /sys and hide the cgroup hierarchies from it). Everything it
# owns lives under $STATE (data), $RUN (sockets, exec-root) and the cgroup $CGROUP_PARENT, so
# `down` removes exactly that. It never touches /var/run/docker.sock: use `eval "$(docker.sh env)"`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

NETNS="${QUIESCE_KIND_NETNS:-quiesce-kind}"
STATE="${QUIESCE_KIND_STATE:-/var/lib/quiesce-kind}"
RUN="${QUIESCE_KIND_RUN:-/run/quiesce-kind}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
LOG="$STATE/dockerd.log"
# Container cgroups (cgroupfs driver) go under /$CGROUP_PARENT in every v1 hierarchy.
CGROUP_PARENT="$NETNS"
# The network kind attaches its nodes to ("kind"), made here with a fixed IPv4 subnet and no
# masquerading: kind reuses an existing network of that name instead of creating its IPv6 one.
KIND_NET=kind
KIND_SUBNET=10.251.0.0/24
KIND_GW=10.251.0.1
KIND_BRIDGE=qzk-br0
# Docker's embedded DNS forwards names it does not know to the daemon's --dns servers. This
# address sits on the namespace's loopback, where nothing listens: lookups fail at once, inside
# the namespace (left to itself, dockerd would forward to the host's resolvers or to 8.8.8.8).
DNS_SINK=10.251.255.53

log() { printf '[kind-docker %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
docker_() { DOCKER_HOST="unix://$SOCK" docker "$@"; }

ensure_dockerd() {
  command -v dockerd >/dev/null && command -v jq >/dev/null && return 0
  log "installing Debian's docker.io (dockerd) and jq (runc-wrapper)"
  # No service may start from the package scripts: a policy-rc.d that denies them (kept if one
  # is already there), and afterwards a check that no dockerd runs.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io jq >/dev/null
  [ "$created" = 1 ] && rm -f "$policy"
  if pgrep -x dockerd >/dev/null; then die "a dockerd started during the package install; stop it first"; fi
}

create_netns() {
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" addr add "$DNS_SINK/32" dev lo
  in_ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

# Refuses to go on unless nothing in the namespace leads out of it (the idea of
# local/cluster.sh's check_isolation): routes only through lo and Docker's bridges, links only
# loopback, bridges and veths that are ports of those bridges (their peers are containers), no
# IPv6 routes, and the kernel answers "unreachable" for public, private and the host's gateway.
check_isolation() {
  local problems=() routes dev name kind netnsid master
  [ -e "/run/netns/$NETNS" ] || die "network namespace $NETNS does not exist"
  routes=$(ip -n "$NETNS" -4 route show table all)
  if grep -qE '^(default|0\.0\.0\.0)' <<<"$routes"; then problems+=("a default route exists"); fi
  while read -r dev; do
    [ -z "$dev" ] && continue
    case "$dev" in lo | "$KIND_BRIDGE" | br-*) ;; *) problems+=("route through device $dev") ;; esac
  done < <(grep -oE ' dev [^ ]+' <<<"$routes" | awk '{print $2}' | sort -u)
  if [ -n "$(ip -n "$NETNS" -6 route show 2>/dev/null)" ]; then problems+=("IPv6 routes exist"); fi
  while read -r name kind netnsid master; do
    case "$kind" in
      loopback | bridge) ;;
      veth) [ "$master" = "$KIND_BRIDGE" ] || [[ "$master" == br-* ]] ||
        problems+=("veth $name is not a port of a Docker bridge (master '$master', peer netns $netnsid)") ;;
      *) problems+=("unexpected link $name of type $kind") ;;
    esac
  done < <(ip -n "$NETNS" -d -j link show | python3 -c '
import json, sys
for l in json.load(sys.stdin):
    kind = (l.get("linkinfo") or {}).get("info_kind") or ("loopback" if l["ifname"] == "lo" else "physical")
    print(l["ifname"], kind, l.get("link_netnsid", "-"), l.get("master", "-"))')
  local uplink_gw probe
  uplink_gw=$(ip -4 route show default 2>/dev/null | awk '/default/ && !g {g = $3} END {print g}')
  for probe in 1.1.1.1 8.8.8.8 192.168.1.1 172.16.0.1 10.0.0.1 ${uplink_gw:+$uplink_gw}; do
    if ip -n "$NETNS" route get "$probe" >/dev/null 2>&1; then problems+=("$probe is routable"); fi
  done
  if [ ${#problems[@]} -gt 0 ]; then
    printf '  - %s\n' "${problems[@]}" >&2
    die "network namespace $NETNS is not isolated"
  fi
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

cmd_up() {
  if running && docker_ info >/dev/null 2>&1; then check_isolation; log "dockerd already up"; return 0; fi
  [ "$(id -u)" = 0 ] || die "needs root (network namespace, dockerd)"
  ensure_dockerd
  [ -e "/run/netns/$NETNS" ] || create_netns
  check_isolation
  mkdir -p "$STATE/docker" "$RUN"
  # Our own daemon.json, so a host /etc/docker/daemon.json cannot change anything here.
  echo '{}' >"$STATE/daemon.json"
  local driver="${QUIESCE_KIND_STORAGE_DRIVER:-overlay2}"
  log "starting dockerd in netns $NETNS (storage driver $driver)"
  # runc-wrapper: privileged containers get only the capabilities this machine allows (see it).
  # --bridge none: no docker0; the kind network below is the only bridge. --iptables stays on
  # (port publishing, inter-network isolation): its rules live in the namespace's own tables.
  setsid nsenter --net="/run/netns/$NETNS" -- env PATH="/usr/sbin:/usr/bin:/sbin:/bin" \
    dockerd --config-file "$STATE/daemon.json" \
    --data-root "$STATE/docker" --exec-root "$RUN/docker" --pidfile "$PIDFILE" \
    --host "unix://$SOCK" --bridge none --ip6tables=false --ipv6=false \
    --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/$CGROUP_PARENT" \
    --storage-driver "$driver" --dns "$DNS_SINK" --log-driver json-file \
    --add-runtime "qzk-runc=$here/runc-wrapper" --default-runtime qzk-runc \
    --default-cgroupns-mode private >>"$LOG" 2>&1 </dev/null &
  local deadline=$(($(date +%s) + 60))
  until docker_ info >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 20 "$LOG" >&2; die "dockerd did not answer within 60s"; }
    sleep 0.5
  done
  [ "$(docker_ info -f '{{.Driver}}')" = "$driver" ] || die "dockerd picked another storage driver"
  if ! docker_ network inspect "$KIND_NET" >/dev/null 2>&1; then
    docker_ network create -d bridge --subnet "$KIND_SUBNET" --gateway "$KIND_GW" \
      -o com.docker.network.bridge.name="$KIND_BRIDGE" \
      -o com.docker.network.bridge.enable_ip_masquerade=false "$KIND_NET" >/dev/null
  fi
  check_isolation
  log "dockerd up: DOCKER_HOST=unix://$SOCK, storage driver $driver, isolated"
}

cmd_down() {
  if running; then
    # Containers first (kind nodes run systemd; dockerd would otherwise wait for each).
    local ids; mapfile -t ids < <(docker_ ps -aq 2>/dev/null || true)
    [ ${#ids[@]} -eq 0 ] || docker_ rm -f -v "${ids[@]}" >/dev/null 2>&1 || true
    local pid; pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd ignored SIGTERM; SIGKILL"; kill -KILL "$pid" || true; }
  fi
  # Shims and the supervised containerd carry our exec-root in their command lines.
  local p
  for p in $(pgrep -f -- "$RUN/docker/containerd" 2>/dev/null || true); do kill -KILL "$p" 2>/dev/null || true; done
  # Mounts under our directories (overlay2 layers, container shm, netns files), deepest first.
  awk -v s="$STATE" -v r="$RUN" 'index($2, s) == 1 || index($2, r) == 1 {print $2}' /proc/self/mounts |
    sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  # Our containers' cgroups, leaves first.
  local ctl
  for ctl in /sys/fs/cgroup/*/; do
    if [ -d "$ctl$CGROUP_PARENT" ]; then find "$ctl$CGROUP_PARENT" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
  done
  [ -e "/run/netns/$NETNS" ] && ip netns delete "$NETNS"
  rm -rf "$RUN"
  # Images and volumes go too (the node image is ~1 GB; reloading it from the cached tar takes
  # ~15 s). QUIESCE_KIND_KEEP_IMAGES=1 keeps them.
  if [ "${QUIESCE_KIND_KEEP_IMAGES:-0}" != 1 ]; then rm -rf "$STATE/docker"; fi
  log "down"
}

cmd_status() {
  local ok=0
  if [ -e "/run/netns/$NETNS" ]; then echo "netns $NETNS: present"; else echo "netns $NETNS: absent"; ok=1; fi
  if running; then echo "dockerd: running (pid $(cat "$PIDFILE"))"; else echo "dockerd: not running"; ok=1; fi
  if [ "$ok" = 0 ]; then
    if (check_isolation); then echo "isolation: nothing leaves $NETNS"; else ok=1; fi
    docker_ info -f 'storage driver {{.Driver}}, cgroup driver {{.CgroupDriver}}, {{.Containers}} containers' || ok=1
  fi
  return $ok
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export DOCKER_HOST=unix://$SOCK" ;;
  check-isolation) check_isolation && echo "isolated" ;;
  *) echo "usage: $0 up|down|status|env|check-isolation" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The "local" cluster provider: a real single-node Kubernetes cluster made of host processes
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd + runc, kubelet,
# kube-proxy in iptables mode, a CNI bridge), all inside one network namespace that this script
# creates and that has no route off the machine.
#
#   cluster.sh up | down | status | kubeconfig | exec CMD... | load-image TAR
#
# Every process is started with `nsenter --net` (network namespace only: kubelet, containerd and
# runc must share the host's mount namespace so volume mounts are visible to containers), its PID
# is recorded in $STATE/pids and its log kept in $STATE/logs. `down` stops exactly those PIDs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/../versions.env"
# shellcheck source=../registry.sh
source "$here/../registry.sh"
CACHE="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
STATE="${QUIESCE_STATE:-/var/lib/quiesce-local}"
NETNS="${QUIESCE_NETNS:-quiesce}"
BIN="$CACHE/k8s/$K8S_VERSION/bin"
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
# Kubernetes >= 1.36 needs containerd 2 (built from its Go module); older ones use Debian's.
if [ "$MINOR" -ge 36 ]; then
  CONTAINERD_BIN="$CACHE/containerd/$CONTAINERD_VERSION/bin"
else
  CONTAINERD_BIN=/usr/bin
fi
# kubelet's cgroupRoot: every pod cgroup lives under it, so `down` removes exactly those.
CGROUP_ROOT="$NETNS"

# Every address the cluster uses. They exist only inside $NETNS.
NODE_NAME=quiesce-node
NODE_IP=10.250.0.2
NODE_NET=10.250.0.0/24
POD_NET=10.244.0.0/24
POD_GW=10.244.0.1
SERVICE_NET=10.96.0.0/16
BRIDGE=qz-cni0
NODE_LINK=qz-node
NODE_PEER=qz-peer
PAUSE_IMAGE=registry.k8s.io/pause:3.10
# The image registry `registry-up` starts (Debian's docker-registry, plain HTTP), on the node's
# address: containerd, skopeo and helm reach it from inside the namespace, nothing outside can.
REGISTRY_ADDR="$NODE_IP:5000"

RUN="$STATE/run"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
PKI="$STATE/pki"
KCFG="$STATE/kubeconfigs"
ETCD_DATA="/dev/shm/quiesce-etcd-$NETNS"
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
export KUBECONFIG="$STATE/kubeconfig"

log() { printf '[local %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }
ROOT=$(cd "$here/../../.." && pwd)
KUBECTL="$ROOT/.tools/bin/kubectl"
kc() { in_ns "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

# --- network namespace ----------------------------------------------------------------------

create_netns() {
  ip netns add "$NETNS"
  mkdir -p "$STATE"
  echo "$NETNS" >"$STATE/netns.created-by-quiesce"
  ip -n "$NETNS" link set lo up
  # The node address lives on a veth whose peer is in the same namespace: a real, carrier-up
  # interface (this kernel has no dummy links) that leads nowhere outside the namespace.
  ip -n "$NETNS" link add "$NODE_LINK" type veth peer name "$NODE_PEER"
  ip -n "$NETNS" addr add "$NODE_IP/24" dev "$NODE_LINK"
  ip -n "$NETNS" link set "$NODE_PEER" up
  ip -n "$NETNS" link set "$NODE_LINK" up
  # Locally generated Service traffic needs a route for the ClusterIP range before kube-proxy's
  # DNAT rewrites it to a pod; un-DNATed packets end at the peer veth, inside the namespace.
  ip -n "$NETNS" route add "$SERVICE_NET" dev "$NODE_LINK"
  in_ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  in_ns sysctl -qw net.ipv4.ip_forward=1
  in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null ||
    log "warning: br_netfilter sysctl not available in the namespace"
}

# Refuses to go on unless every route in the namespace stays inside it. Run before anything
# starts and again by `status`.
check_isolation() {
  local problems=()
  local allowed_devs=" lo $NODE_LINK $NODE_PEER $BRIDGE "
  [ -e "/run/netns/$NETNS" ] || die "network namespace $NETNS does not exist"
  local routes
  routes=$(ip -n "$NETNS" -4 route show table all)
  if grep -qE '^(default|0\.0\.0\.0)' <<<"$routes"; then problems+=("a default route exists"); fi
  while read -r dev; do
    [ -z "$dev" ] && continue
    [[ "$allowed_devs" == *" $dev "* ]] || problems+=("route through foreign device $dev")
  done < <(grep -oE ' dev [^ ]+' <<<"$routes" | awk '{print $2}' | sort -u)
  if [ -n "$(ip -n "$NETNS" -6 route show 2>/dev/null)" ]; then problems+=("IPv6 routes exist"); fi
  # Every link is loopback, a bridge, or a veth whose peer is in this namespace or is a pod's.
  while read -r name kind netnsid; do
    case "$kind" in
      loopback | bridge) ;;
      veth)
        if [ "$netnsid" != "-" ] && [ "$name" = "$NODE_LINK" -o "$name" = "$NODE_PEER" ]; then
          problems+=("veth $name leads to another namespace")
        fi
        if [ "$name" != "$NODE_LINK" ] && [ "$name" != "$NODE_PEER" ] && [ "$netnsid" != "-" ]; then
          # A pod veth: its peer must be in a pod namespace, and it must be a port of our bridge.
          local master
          master=$(ip -n "$NETNS" -j link show dev "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0].get("master",""))')
          [ "$master" = "$BRIDGE" ] || problems+=("veth $name is not a port of $BRIDGE")
        fi
        ;;
      *) problems+=("unexpected link $name of type $kind") ;;
    esac
  done < <(ip -n "$NETNS" -d -j link show | python3 -c '
import json, sys
for l in json.load(sys.stdin):
    kind = (l.get("linkinfo") or {}).get("info_kind") or ("loopback" if l["ifname"] == "lo" else "physical")
    print(l["ifname"], kind, l.get("link_netnsid", "-"))')
  # The kernel's own answer: addresses outside the namespace are unreachable.
  local uplink_gw
  uplink_gw=$(ip -4 route show default 2>/dev/null | awk '/default/ && !g {g = $3} END {print g}')
  for probe in 1.1.1.1 192.168.1.1 172.16.0.1 ${uplink_gw:+$uplink_gw}; do
    if ip -n "$NETNS" route get "$probe" >/dev/null 2>&1; then problems+=("$probe is routable"); fi
  done
  if [ ${#problems[@]} -gt 0 ]; then
    printf '  - %s\n' "${problems[@]}" >&2
    die "network namespace $NETNS is not isolated; refusing to run the cluster"
  fi
}

# --- configuration --------------------------------------------------------------------------

write_pki() {
  local kubeadm="$BIN/kubeadm"
  rm -rf "$PKI" "$KCFG"
  mkdir -p "$PKI" "$KCFG"
  "$kubeadm" init phase certs all --cert-dir "$PKI" --kubernetes-version "$K8S_VERSION" \
    --apiserver-advertise-address "$NODE_IP" --service-cidr "$SERVICE_NET" \
    --apiserver-cert-extra-sans "$NODE_NAME,127.0.0.1" >"$LOGS/kubeadm.log" 2>&1
  "$kubeadm" init phase kubeconfig all --cert-dir "$PKI" --kubeconfig-dir "$KCFG" \
    --kubernetes-version "$K8S_VERSION" --apiserver-advertise-address "$NODE_IP" \
    --node-name "$NODE_NAME" >>"$LOGS/kubeadm.log" 2>&1
}

write_configs() {
  mkdir -p "$STATE/cni/net.d" "$STATE/containerd" "$RUN/containerd" "$STATE/kubelet"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RUN/containerd/containerd.sock.ttrpc"
[debug]
  address = "$RUN/containerd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The VM drops CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  # Per-registry settings (hosts.toml), read at each pull: registry-up adds its own there.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$STATE/containerd/certs.d"
EOF
  cat >"$STATE/cni/net.d/10-quiesce.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "quiesce",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_NET", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # Pods must not learn the host's resolvers: nothing in the cluster resolves names.
  echo "options ndots:1" >"$STATE/resolv.conf"
  local cgroup_v1_opt=""
  [ "$MINOR" -ge 35 ] && cgroup_v1_opt="failCgroupV1: false"
  cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
$cgroup_v1_opt
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
nodeStatusUpdateFrequency: 1s
nodeStatusReportFrequency: 10s
syncFrequency: 5s
resolvConf: $STATE/resolv.conf
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
maxPods: 110
EOF
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
clientConnection: {kubeconfig: $KCFG/admin.conf}
conntrack: {maxPerCore: 0}
iptables: {syncPeriod: 5s, minSyncPeriod: 0s}
EOF
}

# --- processes ------------------------------------------------------------------------------

start() { # name binary args...
  local name=$1; shift
  setsid nsenter --net="/run/netns/$NETNS" -- "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

wait_for() { # description timeout-seconds command...
  local what=$1 timeout=$2; shift 2
  local deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what (logs: $LOGS)"
    check_components_alive
    sleep 0.3
  done
}

# Fails fast, with the log's tail, when a component we started has exited.
check_components_alive() {
  local f name
  for f in "$PIDS"/*.pid; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .pid)
    if ! kill -0 "$(cat "$f")" 2>/dev/null; then
      tail -n 15 "$LOGS/$name.log" >&2
      die "$name exited (log: $LOGS/$name.log)"
    fi
  done
}

stop_pid() { # name: TERM, then KILL after a timeout (kube-scheduler sometimes ignores TERM)
  local name=$1 f="$PIDS/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$f"
}

ctr_() { "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

import_image() { # tar
  ctr_ images import --all-platforms "$1" >/dev/null
}

ensure_pause_image() {
  local tar="$CACHE/images/pause-$K8S_VERSION.tar"
  if [ ! -f "$tar" ]; then
    mkdir -p "$CACHE/images"
    "$here/../images.sh" build-pause "$BIN/pause" "$PAUSE_IMAGE" "$tar"
  fi
  import_image "$tar"
  # Cached project images from an earlier `make images` come back with the cluster.
  for t in "$CACHE"/images/project/*.tar; do [ -f "$t" ] && import_image "$t"; done
  return 0
}

# --- registry -------------------------------------------------------------------------------

# Starts an image registry inside the namespace (a component like the others: `down` stops it)
# and tells containerd to pull from it over plain HTTP. Prints its address.
cmd_registry_up() {
  alive kube-apiserver || die "the cluster is not up"
  if ! alive registry; then
    mkdir -p "$STATE/registry/data"
    registry_config "$REGISTRY_ADDR" "$STATE/registry/data" >"$STATE/registry/config.yml"
    start registry /usr/bin/docker-registry serve "$STATE/registry/config.yml"
    wait_for "registry at $REGISTRY_ADDR" 30 in_ns curl -sf "http://$REGISTRY_ADDR/v2/"
  fi
  local hosts="$STATE/containerd/certs.d/$REGISTRY_ADDR"
  mkdir -p "$hosts"
  registry_hosts_toml "$REGISTRY_ADDR" >"$hosts/hosts.toml"
  echo "$REGISTRY_ADDR"
}

# --- commands -------------------------------------------------------------------------------

cmd_up() {
  if cmd_status >/dev/null 2>&1; then log "cluster already up"; return 0; fi
  local t0; t0=$(date +%s)
  [ "$(id -u)" = 0 ] || die "the local provider needs root (network namespace, containerd, kubelet)"
  cmd_down >/dev/null 2>&1 || true # leftovers of an earlier run
  "$here/install-deps.sh"
  "$here/../tools.sh" >/dev/null
  "$here/build-k8s.sh"
  [ "$MINOR" -lt 36 ] || "$here/build-containerd.sh"
  mkdir -p "$STATE" "$LOGS" "$PIDS" "$RUN"
  log "creating network namespace $NETNS"
  create_netns
  check_isolation
  log "isolation checked: no route leaves $NETNS"
  write_pki
  write_configs
  cp "$KCFG/admin.conf" "$KUBECONFIG"

  mkdir -p "$ETCD_DATA"
  start etcd etcd --name "$NODE_NAME" --data-dir "$ETCD_DATA" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --snapshot-count 10000
  start kube-apiserver "$BIN/kube-apiserver" --advertise-address "$NODE_IP" \
    --bind-address 0.0.0.0 --secure-port 6443 --etcd-servers http://127.0.0.1:2379 \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" \
    --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_NET" --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" \
    --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --requestheader-group-headers X-Remote-Group --requestheader-username-headers X-Remote-User \
    --profiling=false
  log "starting containerd"
  # PATH: containerd finds its runc shim there.
  start containerd env PATH="$CONTAINERD_BIN:$PATH" "$CONTAINERD_BIN/containerd" \
    --config "$STATE/containerd/config.toml"
  wait_for "kube-apiserver /readyz" 60 kc --kubeconfig "$KCFG/super-admin.conf" get --raw /readyz
  # What `kubeadm init` would do: admin.conf's group gets cluster-admin (super-admin.conf, in
  # system:masters, is used for this one step only).
  kc --kubeconfig "$KCFG/super-admin.conf" create clusterrolebinding kubeadm:cluster-admins \
    --clusterrole cluster-admin --group kubeadm:cluster-admins >/dev/null
  # The apiserver's client certificate for kubelets (logs, exec, port-forward).
  kc --kubeconfig "$KCFG/super-admin.conf" create clusterrolebinding kube-apiserver-kubelet-client \
    --clusterrole system:kubelet-api-admin --user kube-apiserver-kubelet-client >/dev/null
  log "kube-apiserver ready"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KCFG/controller-manager.conf" \
    --authentication-kubeconfig "$KCFG/controller-manager.conf" \
    --authorization-kubeconfig "$KCFG/controller-manager.conf" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" \
    --allocate-node-cidrs=true --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_NET" --controllers '*,bootstrapsigner,tokencleaner' \
    --node-monitor-period 2s --node-monitor-grace-period 3m --profiling=false \
    --kube-api-qps 100 --kube-api-burst 200
  # Client rates: the defaults (20 and 50 requests/s) would make the scale benchmark measure
  # how fast the ReplicaSet controller and the scheduler may write, not quiesce. Grace period:
  # under the scale benchmark's burst on two cores, kwok renews its simulated nodes' leases
  # late; after the default 50 s the node lifecycle controller marks their pods not ready, and
  # kwok, which only plays stage transitions, never makes them ready again (rollouts then hang
  # on pods nothing is wrong with). No test here depends on a node being declared dead.
  start kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$KCFG/scheduler.conf" \
    --authentication-kubeconfig "$KCFG/scheduler.conf" \
    --authorization-kubeconfig "$KCFG/scheduler.conf" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false \
    --kube-api-qps 200 --kube-api-burst 400
  wait_for "containerd" 30 ctr_ version
  ensure_pause_image
  # kubelet's cgroupRoot: our pods live under /quiesce in every controller, so `down` can remove
  # exactly what the cluster created.
  for ctl in /sys/fs/cgroup/*/; do [ -L "${ctl%/}" ] || mkdir -p "$ctl/$CGROUP_ROOT"; done
  start kubelet "$BIN/kubelet" --config "$STATE/kubelet/config.yaml" \
    --kubeconfig "$KCFG/kubelet.conf" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" \
    --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" --v 1
  start kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml"
  wait_for "node $NODE_NAME Ready" 90 kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_for "default ServiceAccount" 60 kc get serviceaccount default -n default
  check_isolation
  log "cluster up in $(($(date +%s) - t0))s: Kubernetes $K8S_VERSION, node $NODE_NAME ($NODE_IP)"
  log "kubeconfig: $KUBECONFIG (reachable only inside netns $NETNS: use '$0 exec kubectl ...')"
}

cmd_down() {
  [ -d "$STATE" ] || [ -e "/run/netns/$NETNS" ] || { log "nothing to tear down"; return 0; }
  log "tearing down"
  stop_pid registry
  stop_pid kube-proxy
  stop_pid kubelet
  # Containers outlive the kubelet (runc shims): kill them through containerd, which knows them.
  if alive containerd; then
    local tasks
    tasks=$(ctr_ tasks ls -q 2>/dev/null || true)
    for t in $tasks; do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $tasks; do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null || true); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  # Shims started by our containerd carry its state path in their command line.
  for p in $(pgrep -f "containerd-shim.*-address $CONTAINERD_SOCK" 2>/dev/null || true); do
    kill -KILL "$p" 2>/dev/null || true
  done
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver
  stop_pid etcd
  # Mounts under our state directory (container rootfs, pod volumes, pod netns), deepest first.
  if [ -d "$STATE" ]; then
    awk -v s="$STATE" '$2 ~ "^"s {print $2}' /proc/self/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  fi
  # Our pods' cgroups (kubelet cgroupRoot), leaves first.
  for ctl in /sys/fs/cgroup/*/; do
    [ -d "$ctl/$CGROUP_ROOT" ] && find "$ctl/$CGROUP_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  if [ -e "/run/netns/$NETNS" ]; then ip netns delete "$NETNS"; fi
  rm -rf "$ETCD_DATA"
  # Keep logs of the last run for debugging; remove the rest of the state.
  if [ -d "$STATE" ]; then
    rm -rf "$STATE.last-logs" && { [ -d "$LOGS" ] && mv "$LOGS" "$STATE.last-logs" || true; }
    rm -rf "$STATE"
  fi
  log "down (logs of this run kept in $STATE.last-logs)"
}

cmd_status() {
  local ok=0
  [ -e "/run/netns/$NETNS" ] || { echo "network namespace $NETNS: absent"; return 1; }
  echo "network namespace: $NETNS"
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    if alive "$c"; then echo "  $c: running (pid $(cat "$PIDS/$c.pid"))"; else echo "  $c: NOT running"; ok=1; fi
  done
  (check_isolation) && echo "isolation: no route leaves $NETNS" || ok=1
  if kc get node "$NODE_NAME" --no-headers 2>/dev/null | sed 's/^/node: /'; then :; else echo "node: unreachable"; ok=1; fi
  echo "kubeconfig: $KUBECONFIG"
  echo "logs: $LOGS"
  return $ok
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) echo "$KUBECONFIG" ;;
  exec) shift; export PATH="$ROOT/.tools/bin:$PATH"; in_ns "$@" ;;
  load-image) [ -n "${2:-}" ] || die "usage: $0 load-image TAR"; import_image "$2" ;;
  check-isolation) check_isolation && echo "isolated" ;;
  registry-up) cmd_registry_up ;;
  registry-address) echo "$REGISTRY_ADDR" ;;
  pause-apiserver) # SECONDS: freeze the kube-apiserver (SIGSTOP), as an outage looks to clients
    [ -n "${2:-}" ] || die "usage: $0 pause-apiserver SECONDS"
    pid=$(cat "$PIDS/kube-apiserver.pid")
    trap 'kill -CONT "$pid" 2>/dev/null || true' EXIT
    kill -STOP "$pid"; sleep "$2" ;;
  *) echo "usage: $0 up|down|status|kubeconfig|exec CMD...|load-image TAR|check-isolation|registry-up|registry-address" >&2; exit 2 ;;
esac

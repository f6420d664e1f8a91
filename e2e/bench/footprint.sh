#!/usr/bin/env bash
# The "Image sizes and sidecar memory" table of docs/benchmarks.md: each image's docker archive
# (as `e2e/cluster/images.sh` writes it) and its gzip size (what a registry stores and a node
# pulls), and the sidecar binary's memory on loopback: idle, and under 1000 req/s through its
# proxy (hey, 20 keep-alive workers), in front of the demo app. No cluster.
#
#   footprint.sh                          the images and binaries `images.sh build` made
#   footprint.sh LABEL BIN_DIR TAR_DIR …  several builds side by side (e.g. before / after)
#
# Memory: VmRSS and RssAnon from /proc/PID/status. RssAnon is the process's own memory (heap,
# stacks); the rest of VmRSS is pages of its binary, which every sidecar of the same image on a
# node shares through the page cache. Markdown on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
CACHE="${QUIESCE_CACHE:-$HOME/.cache/quiesce}"
TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/cargo-target}"
HEY="$root/.tools/bin/hey"
[ -x "$HEY" ] || "$root/e2e/cluster/tools.sh" >&2

if [ $# -eq 0 ]; then
  set -- now "$TARGET_DIR/x86_64-unknown-linux-gnu/release" "$CACHE/images/project"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f MB", b / 1e6}'; }

wait_http() { # url
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "footprint.sh: $1 did not answer" >&2
  return 1
}

memory_row() { # label bin_dir
  local label=$1 bins=$2 app_port proxy_port admin_port app sidecar
  app_port=$(free_port) proxy_port=$(free_port) admin_port=$(free_port)
  "$bins/demo-app" --bind 127.0.0.1 --port "$app_port" --exit-on-sigterm immediate >/dev/null 2>&1 &
  app=$!
  wait_http "http://127.0.0.1:$app_port/healthz"
  RUST_LOG=info "$bins/quiesce-sidecar" --mode standalone --admin-bind 127.0.0.1 \
    --admin-port "$admin_port" --app-ports "$app_port" --drain-mode proxy --proxy-bind 127.0.0.1 \
    --proxy-ports "$proxy_port:$app_port" --probe-path /healthz >/dev/null 2>&1 &
  sidecar=$!
  wait_http "http://127.0.0.1:$admin_port/readyz"
  sleep 5
  local idle_rss idle_anon threads
  idle_rss=$(kib $sidecar VmRSS) idle_anon=$(kib $sidecar RssAnon)
  threads=$(ls "/proc/$sidecar/task" | wc -l)
  local rate
  rate=$("$HEY" -z 5s -c 20 -q 50 "http://127.0.0.1:$proxy_port/" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  local load_rss load_anon app_rss
  load_rss=$(kib $sidecar VmRSS) load_anon=$(kib $sidecar RssAnon) app_rss=$(kib $app VmRSS)
  kill "$sidecar" "$app"
  wait "$sidecar" "$app" 2>/dev/null || true
  printf '| %s | %s | %s | %s | %s | %s (%s req/s) | %s |\n' "$label" "$threads" \
    "$(mib "$idle_rss")" "$(mib "$idle_anon")" "$(mib "$load_rss")" "$(mib "$load_anon")" "$rate" \
    "$(mib "$app_rss")"
}

echo "| build | image | docker archive | gzip |"
echo "|---|---|---:|---:|"
args=("$@")
while [ $# -ge 3 ]; do
  for image in sidecar operator demo-app; do
    tar="$3/$image.tar"
    [ -f "$tar" ] || { echo "footprint.sh: no $tar (run e2e/cluster/images.sh build)" >&2; exit 1; }
    printf '| %s | %s | %s | %s |\n' "$1" "$image" "$(mb "$(stat -c %s "$tar")")" \
      "$(mb "$(gzip -c "$tar" | wc -c)")"
  done
  shift 3
done
echo
echo "| build | sidecar threads | sidecar RSS idle | of which own (RssAnon) | RSS at 1000 req/s through its proxy | of which own | demo app RSS |"
echo "|---|---:|---:|---:|---:|---:|---:|"
set -- "${args[@]}"
while [ $# -ge 3 ]; do
  memory_row "$1" "$2"
  shift 3
done

# shellcheck shell=bash
# The development registry both providers start (`cluster.sh registry-up`): Debian's
# docker-registry, plain HTTP, on an address inside the cluster's network namespace. Sourced by
# local/cluster.sh and kind/offline.sh, which start it and hand the node's containerd the
# hosts.toml; these two functions are what they share.

# registry_config ADDR DATA_DIR: the registry's configuration (stdout).
registry_config() {
  cat <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $2}
  delete: {enabled: true}
http:
  addr: $1
EOF
}

# registry_hosts_toml ADDR: containerd's hosts.toml for it: pull over plain HTTP (stdout).
registry_hosts_toml() {
  cat <<EOF
server = "http://$1"
[host."http://$1"]
  capabilities = ["pull", "resolve"]
EOF
}

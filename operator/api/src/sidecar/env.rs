//! Names of the sidecar's environment variables (each is also a `--flag` of the sidecar).

/// Run mode: `kubernetes` (injected) or `standalone`.
pub const QUIESCE_MODE: &str = "QUIESCE_MODE";
/// The app's TCP ports, comma-separated (empty: the pod declares none).
pub const QUIESCE_APP_PORTS: &str = "QUIESCE_APP_PORTS";
/// Address the admin server binds.
pub const QUIESCE_ADMIN_BIND: &str = "QUIESCE_ADMIN_BIND";
/// Admin server port.
pub const QUIESCE_ADMIN_PORT: &str = "QUIESCE_ADMIN_PORT";
/// App health check kind: `http`, `tcp`, `grpc` or `none`.
pub const QUIESCE_PROBE: &str = "QUIESCE_PROBE";
/// Port probed.
pub const QUIESCE_PROBE_PORT: &str = "QUIESCE_PROBE_PORT";
/// Address probed.
pub const QUIESCE_PROBE_HOST: &str = "QUIESCE_PROBE_HOST";
/// HTTP probe path.
pub const QUIESCE_PROBE_PATH: &str = "QUIESCE_PROBE_PATH";
/// HTTP probe scheme: `http` or `https` (TLS without certificate verification, as the
/// kubelet does).
pub const QUIESCE_PROBE_SCHEME: &str = "QUIESCE_PROBE_SCHEME";
/// HTTP probe request headers, one `Name: value` per line (a `Host` header replaces the
/// default one).
pub const QUIESCE_PROBE_HEADERS: &str = "QUIESCE_PROBE_HEADERS";
/// HTTP probe's healthy statuses (`200` or `200-399`).
pub const QUIESCE_PROBE_STATUS: &str = "QUIESCE_PROBE_STATUS";
/// gRPC health service name.
pub const QUIESCE_PROBE_GRPC_SERVICE: &str = "QUIESCE_PROBE_GRPC_SERVICE";
/// Time between probes.
pub const QUIESCE_PROBE_PERIOD: &str = "QUIESCE_PROBE_PERIOD";
/// Time one probe may take.
pub const QUIESCE_PROBE_TIMEOUT: &str = "QUIESCE_PROBE_TIMEOUT";
/// Consecutive successes to become healthy.
pub const QUIESCE_PROBE_SUCCESS_THRESHOLD: &str = "QUIESCE_PROBE_SUCCESS_THRESHOLD";
/// Consecutive failures to become unhealthy.
pub const QUIESCE_PROBE_FAILURE_THRESHOLD: &str = "QUIESCE_PROBE_FAILURE_THRESHOLD";
/// Drain mode: `observe` or `proxy`.
pub const QUIESCE_DRAIN_MODE: &str = "QUIESCE_DRAIN_MODE";
/// How the app treats SIGTERM: `immediate` or `graceful`.
pub const QUIESCE_APP_SHUTDOWN: &str = "QUIESCE_APP_SHUTDOWN";
/// Bound of the wait for the pod to leave the EndpointSlices (`10s`).
pub const QUIESCE_ENDPOINT_TIMEOUT: &str = "QUIESCE_ENDPOINT_TIMEOUT";
/// Time without new connections that counts as quiet (`1000ms`).
pub const QUIESCE_QUIET_PERIOD: &str = "QUIESCE_QUIET_PERIOD";
/// Bound of the quiet period and in-flight wait together (`30s`).
pub const QUIESCE_DRAIN_TIMEOUT: &str = "QUIESCE_DRAIN_TIMEOUT";
/// Evidence of new connections: `netns` or `ports`.
pub const QUIESCE_NEW_CONNECTION_SIGNAL: &str = "QUIESCE_NEW_CONNECTION_SIGNAL";
/// Time between two socket-table observations during a drain.
pub const QUIESCE_POLL_INTERVAL: &str = "QUIESCE_POLL_INTERVAL";
/// On SIGTERM: longest wait for the app's ports to close.
pub const QUIESCE_EXIT_TIMEOUT: &str = "QUIESCE_EXIT_TIMEOUT";
/// Longest wait of the drain answer for its pod-condition report.
pub const QUIESCE_REPORT_TIMEOUT: &str = "QUIESCE_REPORT_TIMEOUT";
/// Proxy mode: `LISTEN:UPSTREAM` port pairs, comma-separated.
pub const QUIESCE_PROXY_PORTS: &str = "QUIESCE_PROXY_PORTS";
/// Proxy mode: address the proxy listeners bind.
pub const QUIESCE_PROXY_BIND: &str = "QUIESCE_PROXY_BIND";
/// Proxy mode: idle time after which a kept-alive connection is closed during a drain.
pub const QUIESCE_PROXY_IDLE_CLOSE: &str = "QUIESCE_PROXY_IDLE_CLOSE";
/// Log format: `json` or `plain`.
pub const QUIESCE_LOG_FORMAT: &str = "QUIESCE_LOG_FORMAT";
/// Runtime threads serving the sidecar's work (1: one thread, the default).
pub const QUIESCE_WORKER_THREADS: &str = "QUIESCE_WORKER_THREADS";
/// Seconds after which the sidecar admits its own undecided pod (fail open).
pub const QUIESCE_FAIL_OPEN_AFTER_SECONDS: &str = crate::constants::SIDECAR_FAIL_OPEN_ENV;
/// Pod name (downward API `metadata.name`).
pub const POD_NAME: &str = "POD_NAME";
/// Pod namespace (downward API `metadata.namespace`).
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
/// Pod IP (downward API `status.podIP`).
pub const POD_IP: &str = "POD_IP";

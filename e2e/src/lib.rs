//! End-to-end test support for quiesce: the cluster harness used by the tests in `tests/`, the
//! load clients (HTTP from the `quiesce-loadgen` crate, gRPC, WebSocket, hey), and the measured
//! rollout scenario behind `make demo` and `make bench`.

pub mod apidoc;
pub mod chaos;
pub mod chart;
pub mod demo_app;
pub mod diagnose;
pub mod fixtures;
pub mod grpc;
pub mod harness;
pub mod hey;
pub mod node;
pub mod prometheus;
pub mod provider;
pub mod rollout;
pub mod scale;
pub mod scenario;
pub mod ws;

// The load generator is its own crate (the sidecar's loopback tests use it too); its old paths
// stay for the tests and tools here.
pub use quiesce_loadgen as loadgen;
pub use quiesce_loadgen::h2chan;

//! End-to-end test support for quiesce: the cluster harness used by the tests in `tests/`, the
//! load generator, and the measured rollout scenario behind `make demo` and `make bench`.

pub mod apidoc;
pub mod chaos;
pub mod chart;
pub mod demo_app;
pub mod diagnose;
pub mod grpc;
pub mod h2chan;
pub mod h2frames;
pub mod harness;
pub mod hey;
pub mod loadgen;
pub mod node;
pub mod prometheus;
pub mod provider;
pub mod reuse;
pub mod scale;
pub mod scenario;
pub mod ws;

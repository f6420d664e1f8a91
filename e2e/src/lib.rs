//! End-to-end test support for quiesce: the cluster harness used by the tests in `tests/`.

pub mod chart;
pub mod harness;
pub mod loadgen;

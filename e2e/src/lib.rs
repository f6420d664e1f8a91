//! End-to-end test support for quiesce: the cluster harness used by the tests in `tests/`.

pub mod harness;
pub mod loadgen;

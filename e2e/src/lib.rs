//! End-to-end test support for quiesce.

pub mod loadgen;

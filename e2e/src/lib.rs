//! End-to-end test support for quiesce.

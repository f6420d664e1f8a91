//! The quiesce API: the `RolloutPolicy` custom resource and the names (conditions, labels,
//! annotations, ports) that the operator, the sidecar and the e2e suite must agree on.

pub mod constants;

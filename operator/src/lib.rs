//! quiesce operator: paces Deployment rollouts through the `quiesce.dev/ready` readiness gate,
//! injects the drain sidecar, and reports what it does.
//!
//! - [`plan`]: the pure decisions (`plan(observed, now) -> Plan`).
//! - [`controller`]: the I/O shell around it (watches, pod and status patches, Events).
//! - [`webhook`]: the mutating admission webhook that injects the sidecar.
//! - [`shared_watch`]: the policy and ReplicaSet watches every replica keeps, shared by the
//!   webhook and the leader's controller.
//! - [`bindings`]: the sidecar's RoleBindings, exactly where a sidecar runs.
//! - [`certs`]: the webhook's self-managed CA and serving certificate.
//! - [`leader`]: Lease-based leader election (only the leader reconciles) and the leader's loop.
//! - [`args`] and [`shutdown`]: the command line and the stop signal, for `main`.
//! - [`kube_client`]: the in-cluster Kubernetes client (without kubeconfig and auth plugins).
//! - [`retry`]: the one retry policy of the background work (backon).
//! - [`admin`] and [`metrics`]: `/livez`, `/readyz`, `/metrics`.

pub mod controller;
pub mod error;
pub mod metrics;
pub mod plan;

pub use error::{Error, Result};
pub mod admin;
pub mod api_timing;
pub mod args;
pub mod bindings;
pub mod certs;
pub mod kube_client;
pub mod leader;
pub mod retry;
pub mod shared_watch;
pub mod shutdown;
pub mod webhook;

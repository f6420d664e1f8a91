//! quiesce sidecar: checks the app's health, and on the preStop call drains the pod's
//! connections before the kubelet sends SIGTERM to the app.
//!
//! Modules, one concern each: [`apiserver`] (the Kubernetes API client: in-cluster config,
//! requests, list-then-watch), [`config`] (flags/env, validation), [`probe`] (health checks),
//! [`sockets`] (socket table), [`drain`] (pure drain state machine), [`drainer`] (its I/O
//! shell), [`endpoints`] (EndpointSlice watch), [`listen`] (dual-stack listeners), [`pod`] (own
//! pod: terminating check and the drained condition), [`admin`] (HTTP endpoints), [`metrics`],
//! [`proxy`] (proxy drain mode: the reverse proxy in front of the app), [`run`] (process wiring),
//! [`tls`] (the TLS of its clients).

pub mod admin;
pub mod apiserver;
pub mod config;
pub mod drain;
pub mod drainer;
pub mod endpoints;
pub mod fail_open;
pub mod listen;
pub mod metrics;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod run;
pub mod sockets;
pub mod tls;

//! A rolling update of the demo app under load, measured: what `make demo` and `make bench` run.
//!
//! One namespace holds one variant of the same Deployment (`demo-app`, 3 replicas, `maxSurge: 1`,
//! `maxUnavailable: 0`, the app exiting the moment it gets SIGTERM): plain, with a
//! `preStop: sleep`, or governed by a `RolloutPolicy` (quiesce). [`Tracker`] watches the
//! namespace's pods and EndpointSlices and timestamps what happens to each pod with the local
//! monotonic clock (API timestamps have one-second precision); [`roll`] changes the app's
//! `VERSION` under open-loop load and returns the load's outcome with the timeline.
//!
//! `manifests.rs` holds the variants and their YAML, `deploy.rs` the namespaces and the first
//! rollout, `tracker.rs` what is seen of each pod, `roll.rs` the measured rollout under load and
//! `rollout.rs` the figures taken from it.

mod deploy;
mod manifests;
mod roll;
mod rollout;
mod tracker;

pub use deploy::{
    NAMESPACE_LABEL, delete_leftovers, delete_namespace, deploy, diagnose, fresh_namespace,
};
pub use manifests::{
    APP, APP_WARMUP_MS, GRACE_SECONDS, MIN_HEALTHY_SECONDS, REPLICAS, Variant, deployment_yaml,
    policy_yaml,
};
pub use roll::{Load, clients, kube_proxy_programming, roll};
pub use rollout::Rollout;
pub use tracker::{DrainReport, PodTrack, Tracker};

//! The label set of each operator metric, as a type: a series cannot be made with a label
//! missing, misspelt or in another order. Policy labels come first where they are flattened in.

use prometheus_client::encoding::EncodeLabelSet;

/// `result` of a reconcile (`ok`, `error`) or a webhook request (`injected`, `skipped`, `error`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: &'static str,
}

/// `error`: what a reconcile failed on ([`crate::Error::metric_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKind {
    pub error: &'static str,
}

/// `verb`, `resource` of an apiserver request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCall {
    pub verb: String,
    pub resource: String,
}

/// `watch`: one of the leader's watches.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Watch {
    pub watch: &'static str,
}

/// `namespace`, `policy`: a RolloutPolicy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Policy {
    pub namespace: String,
    pub policy: String,
}

impl Policy {
    /// The labels of policy `policy` in `namespace`.
    pub fn new(namespace: &str, policy: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        }
    }
}

/// A policy and its `phase`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyPhase {
    #[prometheus(flatten)]
    pub policy: Policy,
    pub phase: &'static str,
}

/// A policy and a `state` of its replicas (`desired`, `updated`, `admitted`, `ready`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyReplicas {
    #[prometheus(flatten)]
    pub policy: Policy,
    pub state: &'static str,
}

/// A policy and the `result` of a drain (`completed`, `forced`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyDrain {
    #[prometheus(flatten)]
    pub policy: Policy,
    pub result: &'static str,
}

/// A policy and the `reason` a pod was admitted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyAdmission {
    #[prometheus(flatten)]
    pub policy: Policy,
    pub reason: &'static str,
}

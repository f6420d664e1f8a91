//! The operator's error type.

/// Everything that can go wrong in the operator's shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the policy finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The stable revision's ReplicaSet could not be found for a rollback.
    #[error("rollback: {0}")]
    Rollback(String),
    /// Generating or storing the webhook certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// An object could not be serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// A short label for the `reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Rollback(_) => "rollback",
            Error::Certificate(_) => "certificate",
            Error::Serialization(_) => "serialization",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

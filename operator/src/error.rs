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
    /// A rollback found nothing to restore.
    #[error("rollback: {0}")]
    Rollback(#[from] RollbackError),
    /// Generating the webhook certificate failed (the error of rcgen, time or jiff).
    #[error("certificate: {0}")]
    Certificate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The pods of the policy's namespace were not listed in time (the watch goes on).
    #[error("pods of namespace {0} not listed yet")]
    PodsNotListed(String),
    /// An object could not be serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// A short label for the `reconcile_errors_total` metric. kube's finalizer helper wraps
    /// every error of the reconcile it runs: those are labelled by their own cause, and
    /// `finalizer` is left for adding or removing the finalizer itself.
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match e.as_ref() {
                F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Error::Rollback(_) => "rollback",
            Error::Certificate(_) => "certificate",
            Error::Serialization(_) => "serialization",
            Error::PodsNotListed(_) => "pods_not_listed",
        }
    }

    /// Whether the pass failed only because the cache had not yet seen the operator's own
    /// last write: kube's finalizer helper patches the finalizer list with a JSON-patch `test`
    /// of the cached list, which the apiserver rejects (422) once a pass moments before added
    /// it. The next pass, on a fresher cache, succeeds: worth a quick retry, not a warning.
    pub fn is_stale_cache(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Finalizer(e) => matches!(
                e.as_ref(),
                F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
                    if s.code == 422 || s.code == 409
            ),
            _ => false,
        }
    }
}

/// Why a rollback found nothing to restore.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The target Deployment is not in the cache.
    #[error("Deployment {0} is gone")]
    TargetGone(String),
    /// No ReplicaSet of the target has the stable revision's hash.
    #[error("no ReplicaSet of revision {0}")]
    NoReplicaSet(String),
    /// The stable revision's ReplicaSet has no pod template.
    #[error("ReplicaSet of revision {0} has no template")]
    NoTemplate(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as F;

    #[test]
    fn an_error_inside_the_finalizer_helper_is_labelled_by_its_cause() {
        let applied = Error::Finalizer(Box::new(F::ApplyFailed(Error::PodsNotListed(
            "shop".into(),
        ))));
        assert_eq!(applied.metric_label(), "pods_not_listed");
        let cleanup = Error::Finalizer(Box::new(F::CleanupFailed(Error::Rollback(
            RollbackError::TargetGone("web".into()),
        ))));
        assert_eq!(cleanup.metric_label(), "rollback");
        let own = Error::Finalizer(Box::new(F::UnnamedObject));
        assert_eq!(own.metric_label(), "finalizer");
    }

    #[test]
    fn a_finalizer_patch_against_a_stale_cache_is_told_apart() {
        let status = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("the server rejected our request", "Invalid")
                    .with_code(code)
                    .boxed(),
            )
        };
        let add = |code| Error::Finalizer(Box::new(F::AddFinalizer(status(code))));
        assert!(add(422).is_stale_cache());
        assert!(add(409).is_stale_cache());
        assert!(!add(403).is_stale_cache());
        let remove = Error::Finalizer(Box::new(F::RemoveFinalizer(status(422))));
        assert!(remove.is_stale_cache());
        let applied = Error::Finalizer(Box::new(F::ApplyFailed(Error::PodsNotListed(
            "shop".into(),
        ))));
        assert!(!applied.is_stale_cache());
        assert!(!Error::Kube(status(422)).is_stale_cache());
    }
}

//! Which policy governs a Deployment that several policies target: the oldest (creation time,
//! then name). The controller (which policies are in `Conflict`, naming the winner) and the
//! webhook (whose injection a pod gets) both ask here, so they cannot disagree.

use std::borrow::Borrow;

use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use quiesce_api::RolloutPolicy;

/// A policy's place in a conflict: the lowest governs.
pub fn seniority(p: &RolloutPolicy) -> (Option<Timestamp>, String) {
    (
        p.meta().creation_timestamp.clone().map(|t| t.0),
        p.name_any(),
    )
}

/// Of `policies` (all targeting one Deployment), the one that governs it: the oldest that is
/// not being deleted.
pub fn governing<P: Borrow<RolloutPolicy>>(policies: impl IntoIterator<Item = P>) -> Option<P> {
    policies
        .into_iter()
        .filter(|p| p.borrow().meta().deletion_timestamp.is_none())
        .min_by_key(|p| seniority(p.borrow()))
}

/// The policy `policy` yields its target to: the governing one of `rivals` (the other policies
/// targeting the same Deployment) when it is older than `policy`.
pub fn conflict_winner<P: Borrow<RolloutPolicy>>(
    policy: &RolloutPolicy,
    rivals: impl IntoIterator<Item = P>,
) -> Option<String> {
    governing(rivals)
        .filter(|w| seniority(w.borrow()) < seniority(policy))
        .map(|w| w.borrow().name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn policy(name: &str, created: i64, deleting: bool) -> RolloutPolicy {
        let mut p = RolloutPolicy::new(name, quiesce_api::RolloutPolicySpec::for_deployment("web"));
        p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        }
        p
    }

    #[test]
    fn the_oldest_policy_governs_and_is_named_as_the_winner() {
        // Oldest first by time, then by name: "zeta" (t=1) governs although "alpha" sorts first.
        let zeta = policy("zeta", 1, false);
        let alpha = policy("alpha", 2, false);
        let young = policy("young", 3, false);
        let all = [&zeta, &alpha, &young];
        assert_eq!(
            governing(all).map(ResourceExt::name_any),
            Some("zeta".into())
        );
        assert_eq!(
            conflict_winner(&young, [&zeta, &alpha]),
            Some("zeta".into())
        );
        assert_eq!(
            conflict_winner(&alpha, [&zeta, &young]),
            Some("zeta".into())
        );
        assert_eq!(conflict_winner(&zeta, [&alpha, &young]), None);
        // Same creation second: the name decides.
        let beta = policy("beta", 2, false);
        assert_eq!(conflict_winner(&beta, [&alpha]), Some("alpha".into()));
        assert_eq!(conflict_winner(&alpha, [&beta]), None);
    }

    #[test]
    fn a_policy_being_deleted_governs_nothing() {
        let old_deleting = policy("old", 1, true);
        let young = policy("young", 2, false);
        assert_eq!(
            governing([&old_deleting, &young]).map(ResourceExt::name_any),
            Some("young".into())
        );
        assert_eq!(conflict_winner(&young, [&old_deleting]), None);
        // The deleting policy itself still yields to an older live one, and to no younger one.
        assert_eq!(conflict_winner(&old_deleting, [&young]), None);
        assert!(governing([&old_deleting]).is_none());
    }
}

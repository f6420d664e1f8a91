use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use quiesce_api::RolloutPolicySpec;

const ROLE: &str = "quiesce-sidecar";

fn policy(ns: &str, target: &str) -> RolloutPolicy {
    let mut p = RolloutPolicy::new(target, RolloutPolicySpec::for_deployment(target));
    p.metadata.namespace = Some(ns.into());
    p
}

fn deployment(ns: &str, name: &str, sa: Option<&str>) -> Arc<CachedDeployment> {
    let mut d: CachedDeployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {}, "template": {"spec": {"containers": []}}},
    }))
    .unwrap();
    if let Some(sa) = sa {
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .service_account_name = Some(sa.into());
    }
    Arc::new(d)
}

fn injected_pod(ns: &str, sa: &str) -> CachedPod {
    let mut p = CachedPod {
        spec: Some(CachedPodSpec {
            service_account_name: Some(sa.into()),
            ..CachedPodSpec::default()
        }),
        ..CachedPod::default()
    };
    p.metadata.namespace = Some(ns.into());
    p.labels_mut().insert(POLICY.into(), "web".into());
    p
}

fn account(ns: &str, sa: &str) -> Account {
    Account::new(ns, sa)
}

fn existing(ns: &str, sa: &str) -> Arc<RoleBinding> {
    Arc::new(binding(ROLE, &account(ns, sa), None))
}

fn scope() -> Scope {
    Scope {
        excluded: ["kube-system".to_owned()].into(),
    }
}

fn wanted_of(
    policies: &[RolloutPolicy],
    deployments: &[Arc<CachedDeployment>],
    pods: &[CachedPod],
) -> BTreeSet<Account> {
    let labels: BTreeMap<String, BTreeMap<String, String>> = [
        ("shop", None),
        ("kube-system", None),
        ("off", Some(INJECT_DISABLED)),
        ("other", None),
    ]
    .into_iter()
    .map(|(ns, inject)| {
        let labels = inject
            .map(|v| BTreeMap::from([(INJECT_LABEL.to_owned(), v.to_owned())]))
            .unwrap_or_default();
        (ns.to_owned(), labels)
    })
    .collect();
    let scope = scope();
    wanted(
        policies,
        |ns, name| {
            deployments
                .iter()
                .find(|d| d.namespace().as_deref() == Some(ns) && d.name_any() == name)
                .cloned()
        },
        pods,
        |ns| scope.injects(ns, labels.get(ns)),
    )
}

#[test]
fn a_policy_binds_the_service_account_its_target_runs_as() {
    let wanted = wanted_of(
        &[policy("shop", "web"), policy("shop", "api")],
        &[
            deployment("shop", "web", Some("web-sa")),
            deployment("shop", "api", None),
        ],
        &[],
    );
    assert_eq!(
        wanted,
        [account("shop", "default"), account("shop", "web-sa")].into()
    );
}

#[test]
fn nothing_is_bound_without_a_target_or_where_injection_is_off() {
    let mut deleting = policy("shop", "web");
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let wanted = wanted_of(
        &[
            policy("shop", "missing"),
            deleting,
            policy("kube-system", "dns"),
            policy("off", "web"),
            policy("unknown-namespace", "web"),
        ],
        &[
            deployment("shop", "web", None),
            deployment("kube-system", "dns", None),
            deployment("off", "web", None),
            deployment("unknown-namespace", "web", None),
        ],
        &[injected_pod("off", "default")],
    );
    assert!(wanted.is_empty(), "{wanted:?}");
}

#[test]
fn pods_that_carry_the_sidecar_keep_their_binding_after_the_policy_goes() {
    let mut plain = injected_pod("other", "plain");
    plain.labels_mut().clear();
    let wanted = wanted_of(&[], &[], &[injected_pod("shop", "web-sa"), plain]);
    assert_eq!(wanted, [account("shop", "web-sa")].into());
}

#[test]
fn missing_bindings_are_applied_and_unwanted_ones_deleted() {
    let wanted = [account("shop", "default"), account("other", "api")].into();
    let changes = changes(
        ROLE,
        &wanted,
        &[existing("shop", "default"), existing("gone", "default")],
    );
    assert_eq!(
        changes,
        vec![
            Change::Delete {
                namespace: "gone".into(),
                name: "quiesce-sidecar-default".into()
            },
            Change::Apply(account("other", "api")),
        ]
    );
}

#[test]
fn a_binding_edited_by_hand_is_put_back() {
    let wanted: BTreeSet<_> = [account("shop", "default")].into();
    let mut widened = binding(ROLE, &account("shop", "default"), None);
    widened.subjects.as_mut().unwrap().push(Subject {
        kind: "ServiceAccount".into(),
        name: "intruder".into(),
        namespace: Some("shop".into()),
        api_group: None,
    });
    let mut unlabelled = binding(ROLE, &account("shop", "default"), None);
    unlabelled.labels_mut().remove(SIDECAR_BINDING);
    for edited in [widened, unlabelled] {
        assert_eq!(
            changes(ROLE, &wanted, &[Arc::new(edited)]),
            vec![Change::Apply(account("shop", "default"))]
        );
    }
    assert!(changes(ROLE, &wanted, &[existing("shop", "default")]).is_empty());
}

#[test]
fn bindings_of_another_role_are_left_alone() {
    let other = Arc::new(binding("someone-else", &account("shop", "default"), None));
    assert!(changes(ROLE, &BTreeSet::new(), &[other]).is_empty());
}

//! The sidecar's role and ValidatingAdmissionPolicy exist twice: in the chart and in
//! `sidecar/deploy/` (installs without Helm, and the sidecar e2e test). The two must grant the
//! same rules and be the same policy, selecting the operator's bindings by the label the
//! operator sets.

use std::path::Path;

use quiesce_operator::bindings::SIDECAR_BINDING;

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The policy's `spec:` block (up to the next document), and the binding's `paramRef` block.
fn policy_parts(yaml: &str) -> (String, String) {
    let policy = yaml
        .split("\n---\n")
        .find(|doc| doc.contains("kind: ValidatingAdmissionPolicy\n"))
        .expect("a ValidatingAdmissionPolicy");
    let spec = &policy[policy.find("\nspec:\n").expect("a spec")..];
    let binding = yaml
        .split("\n---\n")
        .find(|doc| doc.contains("kind: ValidatingAdmissionPolicyBinding\n"))
        .expect("a ValidatingAdmissionPolicyBinding");
    let param_ref = &binding[binding.find("  paramRef:").expect("a paramRef")..];
    (spec.trim().to_owned(), param_ref.trim().to_owned())
}

#[test]
fn the_chart_and_the_plain_manifest_install_the_same_policy() {
    let chart = policy_parts(&read("charts/quiesce/templates/sidecar-rbac.yaml"));
    let plain = policy_parts(&read("sidecar/deploy/validating-admission-policy.yaml"));
    assert_eq!(chart, plain);
    assert!(
        chart.1.contains(&format!("{SIDECAR_BINDING}: \"true\"")),
        "the policy's parameters are the bindings the operator labels: {}",
        chart.1
    );
    assert!(read("sidecar/deploy/role.yaml").contains(&format!("{SIDECAR_BINDING}: \"true\"")));
}

/// The `rules:` block of the document of kind `kind`.
fn rules(yaml: &str, kind: &str) -> String {
    let doc = yaml
        .split("\n---\n")
        .find(|doc| doc.contains(&format!("kind: {kind}\n")))
        .unwrap_or_else(|| panic!("a {kind}"));
    doc[doc.find("\nrules:\n").expect("rules")..]
        .trim()
        .to_owned()
}

#[test]
fn the_chart_and_the_plain_manifest_grant_the_same_rules() {
    let chart = rules(
        &read("charts/quiesce/templates/sidecar-rbac.yaml"),
        "ClusterRole",
    );
    let plain = rules(&read("sidecar/deploy/role.yaml"), "Role");
    assert_eq!(chart, plain);
    assert!(chart.contains("pods/status"), "{chart}");
}

//! The generated CRD: committed copies up to date, schema properties, and the examples.
//!
//! The examples are checked client-side here (typed parsing and the CRD's CEL rules through
//! kube's CEL evaluator); the e2e suite and `make crd-validate` check them against the
//! apiserver's own validation.

use std::path::{Path, PathBuf};

use kube::core::cel::Validator;
use quiesce_api::{RolloutPolicy, crd, messages};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn crd_json() -> Value {
    serde_json::to_value(crd::crd()).unwrap()
}

/// The openAPIV3Schema of the only version.
fn schema() -> Value {
    crd_json()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

#[test]
fn committed_crd_yaml_matches_the_types() {
    let want = crd::crd_yaml();
    for path in crd::CRD_PATHS {
        let have = std::fs::read_to_string(repo_root().join(path)).unwrap_or_default();
        assert!(
            have == want,
            "{path} is not what the Rust types in operator/api generate: run `make crds` and commit the result"
        );
    }
}

#[test]
fn crd_names_scope_and_subresources() {
    let crd = crd_json();
    assert_eq!(crd["metadata"]["name"], crd::CRD_NAME);
    assert_eq!(crd["spec"]["group"], "quiesce.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "RolloutPolicy");
    assert_eq!(crd["spec"]["names"]["plural"], "rolloutpolicies");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["rp", "qrp"]));
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Target", "Phase", "Step", "Desired", "Updated", "Ready", "Drains", "Forced", "Age"
        ]
    );
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    let required = conditions["items"]["required"].as_array().unwrap();
    assert!(
        required.contains(&json!("type")),
        "list-map keys must be required"
    );
}

#[test]
fn required_fields() {
    let schema = schema();
    assert_eq!(schema["required"], json!(["spec"]));
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], json!(["targetRef"]));
    assert_eq!(spec["properties"]["targetRef"]["required"], json!(["name"]));
}

#[test]
fn steps_admit_is_int_or_percent_and_bounded() {
    let steps = &schema()["properties"]["spec"]["properties"]["steps"];
    assert_eq!(steps["maxItems"], 32);
    let admit = &steps["items"]["properties"]["admit"];
    assert_eq!(admit["x-kubernetes-int-or-string"], true);
    assert_eq!(admit["pattern"], quiesce_api::ADMIT_PERCENT_PATTERN);
}

/// Every rule message in `messages` is attached to some `x-kubernetes-validations` rule.
#[test]
fn every_cel_message_is_in_the_schema() {
    let mut found = Vec::new();
    collect_rules(&schema(), &mut found);
    for message in [
        messages::TARGET_API_VERSION,
        messages::TARGET_KIND,
        messages::TARGET_NAME,
        messages::STEP_ONE_OF,
        messages::ADMIT_COUNT,
        messages::ADMIT_PERCENT,
        messages::ADMIT_COUNTS_ORDER,
        messages::ADMIT_PERCENTS_ORDER,
        messages::LAST_STEP_FULL,
        messages::FAIL_OPEN_AFTER_MIN_HEALTHY,
        messages::QUIET_PERIOD_WITHIN_TIMEOUT,
        messages::QUIET_PERIOD_MIN,
    ] {
        assert!(
            found.iter().any(|(_, m)| m == message),
            "no rule with message {message:?}"
        );
    }
    assert_eq!(found.len(), 12, "{found:#?}");
    for (rule, message) in &found {
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "rule {rule} needs a one-line message"
        );
    }
}

fn collect_rules(schema: &Value, out: &mut Vec<(String, String)>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    out.push((
                        rule["rule"].as_str().unwrap_or_default().to_owned(),
                        rule["message"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
            map.values().for_each(|v| collect_rules(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rules(v, out)),
        _ => {}
    }
}

/// `kubectl explain` shows descriptions: every property of spec and status has one.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(Value::Object(props)) = schema.get("properties") {
            for (name, prop) in props {
                let path = format!("{path}.{name}");
                if prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(path.clone());
                }
                walk(&path, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    let schema = schema();
    walk("spec", &schema["properties"]["spec"], &mut missing);
    walk("status", &schema["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:?}"
    );
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn valid_examples() -> Vec<PathBuf> {
    let mut files = vec![repo_root().join("examples/rolloutpolicy.yaml")];
    files.extend(yaml_files("examples/valid"));
    files
}

/// kube-cel cannot evaluate `type()`, which every int-or-string rule needs; those rules are
/// only checked by the apiserver's code (`make crd-validate`, e2e).
fn client_side(rule: &str) -> bool {
    !rule.contains("type(")
}

/// Client-side CEL validation of a JSON object against the CRD schema, for the rules kube-cel
/// can evaluate.
fn cel_errors(object: &Value) -> Vec<String> {
    match Validator::new().validate(&schema(), object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .filter(|e| client_side(&e.rule))
            .map(|e| e.to_string())
            .collect(),
    }
}

#[test]
fn valid_examples_parse_and_pass_the_cel_rules() {
    let files = valid_examples();
    assert!(files.len() >= 2);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let policy: RolloutPolicy = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a RolloutPolicy: {e}", path.display()));
        assert!(
            policy.metadata.name.is_some(),
            "{}: no name",
            path.display()
        );
        for step in &policy.spec.steps {
            assert!(
                step.action().is_some(),
                "{}: bad step {step:?}",
                path.display()
            );
        }
        let object: Value = serde_yaml::from_str(&text).unwrap();
        let errors = cel_errors(&object);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn the_demo_example_targets_the_demo_app() {
    let text = std::fs::read_to_string(repo_root().join("examples/rolloutpolicy.yaml")).unwrap();
    let policy: RolloutPolicy = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        policy.spec.target_ref,
        quiesce_api::TargetRef::deployment("demo-app")
    );
}

/// Every invalid example says, on its first line, which error the apiserver must report; the
/// ones rejected by a CEL rule kube-cel can evaluate are also rejected client-side with that
/// message.
#[test]
fn invalid_examples_declare_the_expected_error() {
    let files = yaml_files("examples/invalid");
    assert!(files.len() >= 10);
    let cel_messages = {
        let mut rules = Vec::new();
        collect_rules(&schema(), &mut rules);
        rules
            .into_iter()
            .filter(|(rule, _)| client_side(rule))
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
    };
    let mut checked_client_side = 0;
    for path in files {
        let name = path.display();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name}: the first line must be `# expect: <error text>`"));
        assert!(!expect.is_empty(), "{name}: empty expectation");

        // Well-formed RolloutPolicy objects; only schema-level constraints are broken (typed
        // parsing may fail for enum values or required fields, which the schema also rejects).
        let object: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(object["apiVersion"], "quiesce.dev/v1alpha1", "{name}");
        assert_eq!(object["kind"], "RolloutPolicy", "{name}");
        assert!(object["metadata"]["name"].is_string(), "{name}");

        if let Some(message) = cel_messages.iter().find(|m| m.contains(expect)) {
            let errors = cel_errors(&object);
            assert!(
                errors.iter().any(|e| e.contains(message.as_str())),
                "{name}: expected the CEL rule {message:?} to fail, got {errors:?}"
            );
            checked_client_side += 1;
        }
    }
    assert!(
        checked_client_side >= 5,
        "only {checked_client_side} checked client-side"
    );
}

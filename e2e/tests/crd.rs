//! The RolloutPolicy CRD on a real apiserver: it installs, every example in `examples/` is
//! accepted, and every example in `examples/invalid/` is rejected with the message its
//! `# expect:` line names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject};
use quiesce_e2e::harness::{self, apply_yaml, create, with_namespace};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

async fn install_crd(client: &kube::Client) -> Result<()> {
    let yaml = std::fs::read_to_string(repo().join("crds/rolloutpolicies.quiesce.dev.yaml"))?;
    apply_yaml(client, "default", &yaml).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    harness::eventually("CRD Established", Duration::from_secs(30), || async {
        let crd = crds.get(quiesce_api::crd::CRD_NAME).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        Ok(established.then_some(()))
    })
    .await
}

fn parse(path: &Path) -> Result<DynamicObject> {
    let text = std::fs::read_to_string(path)?;
    serde_yaml::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn expected_message(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# expect:"))
        .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn valid_examples_are_accepted_and_invalid_ones_rejected_with_their_message() {
    with_namespace("crd", |client, ns| async move {
        install_crd(&client).await?;

        let mut valid = vec![repo().join("examples/rolloutpolicy.yaml")];
        valid.extend(yaml_files("examples/valid"));
        for path in &valid {
            let obj = parse(path)?;
            create(&client, &ns, obj)
                .await
                .with_context(|| format!("{} should be accepted", path.display()))?;
        }

        let invalid = yaml_files("examples/invalid");
        assert!(!invalid.is_empty(), "examples/invalid has examples");
        let mut wrong = Vec::new();
        for path in &invalid {
            let expect = expected_message(path);
            let obj = match parse(path) {
                Ok(obj) => obj,
                Err(e) => {
                    wrong.push(format!("{}: does not parse: {e:#}", path.display()));
                    continue;
                }
            };
            match create(&client, &ns, obj).await {
                Ok(_) => wrong.push(format!("{}: accepted, expected '{expect}'", path.display())),
                Err(kube::Error::Api(status)) if status.message.contains(&expect) => {
                    println!("{}: rejected: {}", path.display(), status.message);
                }
                Err(e) => wrong.push(format!("{}: expected '{expect}', got: {e}", path.display())),
            }
        }
        assert!(
            wrong.is_empty(),
            "invalid examples not rejected as expected:\n{}",
            wrong.join("\n")
        );
        println!(
            "{} valid examples accepted, {} invalid rejected with their message",
            valid.len(),
            invalid.len()
        );
        Ok(())
    })
    .await;
}

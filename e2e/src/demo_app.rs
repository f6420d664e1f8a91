//! The demo app's Deployment and Service: the one manifest the e2e tests, the demo and the
//! benchmark roll, built over the few things they vary. JSON, which `apply_yaml` reads as YAML.

use serde_json::{Value, json};

use crate::harness;

/// A demo-app Deployment (pods labelled `app=<name>`, one container `app` with its port named
/// `http`, 8080 unless told, restricted security settings) and its Service (port 80 to `http`).
#[derive(Clone, Debug)]
pub struct DemoApp {
    name: String,
    replicas: usize,
    env: Vec<Value>,
    grace_seconds: u64,
    probe: Option<Value>,
    pre_stop: Option<Value>,
    pull_policy: &'static str,
    resources: Option<Value>,
    service_account: Option<String>,
    service_target_port: Value,
    app_port: u16,
    image: String,
}

impl DemoApp {
    /// `replicas` pods of `name` serving `version`: 30 s grace, the app's own readiness probe
    /// (`/healthz`, every second), the image as `make images` loaded it.
    pub fn new(name: &str, replicas: usize, version: &str) -> Self {
        Self {
            name: name.to_owned(),
            replicas,
            env: vec![json!({"name": "VERSION", "value": version})],
            grace_seconds: 30,
            probe: Some(Self::app_probe(1)),
            pre_stop: None,
            pull_policy: "Never",
            resources: None,
            service_account: None,
            service_target_port: json!("http"),
            app_port: 8080,
            image: harness::image("demo-app"),
        }
    }

    /// The app's readiness probe, `/healthz` every `period_seconds`.
    pub fn app_probe(period_seconds: u32) -> Value {
        json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": period_seconds})
    }

    /// An env var of the app.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push(json!({"name": name, "value": value}));
        self
    }

    /// An env var of the app from the pod's own fields (`metadata.name`, ...).
    pub fn env_field(mut self, name: &str, field_path: &str) -> Self {
        self.env
            .push(json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}));
        self
    }

    /// `terminationGracePeriodSeconds`.
    pub fn grace_seconds(mut self, seconds: u64) -> Self {
        self.grace_seconds = seconds;
        self
    }

    /// The app container's readiness probe; `None` for none.
    pub fn probe(mut self, probe: Option<Value>) -> Self {
        self.probe = probe;
        self
    }

    /// The app container's `lifecycle.preStop`.
    pub fn pre_stop(mut self, hook: Value) -> Self {
        self.pre_stop = Some(hook);
        self
    }

    /// The app's image (a registry's, for a test that pulls), pulled if not present.
    pub fn image(mut self, reference: &str) -> Self {
        self.image = reference.to_owned();
        self.pull_policy = "IfNotPresent";
        self
    }

    /// `imagePullPolicy` (the benchmark's clusters may pull).
    pub fn pull_policy(mut self, policy: &'static str) -> Self {
        self.pull_policy = policy;
        self
    }

    /// The app container's `resources`.
    pub fn resources(mut self, resources: Value) -> Self {
        self.resources = Some(resources);
        self
    }

    /// The pods' service account.
    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = Some(name.to_owned());
        self
    }

    /// The Service's `targetPort` (a number goes straight to the app, past a drain proxy).
    pub fn service_target_port(mut self, port: Value) -> Self {
        self.service_target_port = port;
        self
    }

    /// The app's container port (named `http`; the app listens where its `PORT` env says).
    pub fn app_port(mut self, port: u16) -> Self {
        self.app_port = port;
        self
    }

    /// The Deployment.
    pub fn deployment(&self) -> Value {
        let labels = json!({"app": self.name});
        let mut app = json!({
            "name": "app",
            "image": self.image,
            "imagePullPolicy": self.pull_policy,
            "env": self.env,
            "ports": [{"containerPort": self.app_port, "name": "http"}],
            "securityContext": {"allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
        });
        if let Some(probe) = &self.probe {
            app["readinessProbe"] = probe.clone();
        }
        if let Some(hook) = &self.pre_stop {
            app["lifecycle"] = json!({"preStop": hook});
        }
        if let Some(resources) = &self.resources {
            app["resources"] = resources.clone();
        }
        let mut pod = json!({
            "terminationGracePeriodSeconds": self.grace_seconds,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [app],
        });
        if let Some(sa) = &self.service_account {
            pod["serviceAccountName"] = json!(sa);
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        })
    }

    /// The Service.
    pub fn service(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name},
            "spec": {"selector": {"app": self.name},
                "ports": [{"port": 80, "targetPort": self.service_target_port}]},
        })
    }

    /// The Deployment, then the Service, as one manifest.
    pub fn yaml(&self) -> String {
        format!("{}\n---\n{}\n", self.deployment(), self.service())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_two_documents_with_what_was_asked() {
        let app = DemoApp::new("web", 2, "v2")
            .env("EXIT_ON_SIGTERM", "immediate")
            .grace_seconds(20)
            .probe(None)
            .pre_stop(json!({"sleep": {"seconds": 5}}))
            .service_target_port(json!(8080));
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&app.yaml())
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let pod = &docs[0]["spec"]["template"]["spec"];
        assert_eq!(pod["terminationGracePeriodSeconds"], 20);
        let app_container = &pod["containers"][0];
        assert_eq!(
            app_container["env"][0],
            json!({"name": "VERSION", "value": "v2"})
        );
        assert_eq!(app_container["env"][1]["value"], "immediate");
        assert!(app_container.get("readinessProbe").is_none());
        assert_eq!(app_container["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
        assert_eq!(docs[0]["spec"]["replicas"], 2);
        assert_eq!(docs[1]["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(docs[1]["spec"]["selector"]["app"], "web");
    }
}

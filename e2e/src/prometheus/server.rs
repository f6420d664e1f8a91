//! A Prometheus process in the tests' network namespace, started with the scrape
//! configurations and rules, stopped when dropped, and queried through its HTTP API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use tokio::process::{Child, Command};

use crate::chart;

/// A series of a query result: its labels and its values (one for an instant query).
#[derive(Debug, Clone)]
pub struct Series {
    /// The labels.
    pub labels: BTreeMap<String, String>,
    /// `(unix seconds, value)` samples.
    pub values: Vec<(f64, f64)>,
}

/// A running Prometheus, stopped when dropped.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    dir: PathBuf,
}

/// `promtool` (for the static checks).
pub fn promtool() -> PathBuf {
    chart::tool("promtool")
}

/// Unix seconds now.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `scrape_configs`, evaluating `rule_groups` every
    /// `interval`, and waits until it is ready.
    pub async fn start(
        dir: &Path,
        scrape_configs: Vec<Yaml>,
        rule_groups: &Yaml,
        interval: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let rules = dir.join("rules.yaml");
        std::fs::write(
            &rules,
            serde_yaml::to_string(&BTreeMap::from([("groups", rule_groups.clone())]))?,
        )?;
        let config = serde_json::json!({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [rules],
            "scrape_configs": scrape_configs,
        });
        let config_file = dir.join("prometheus.yaml");
        std::fs::write(&config_file, serde_yaml::to_string(&config)?)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(chart::tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context(
                "starting prometheus (e2e/cluster/tools.sh prometheus installs it into .tools/bin)",
            )?;
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        crate::harness::eventually("prometheus ready", Duration::from_secs(60), || async {
            Ok(crate::harness::http_get(&ready)
                .await
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| ()))
        })
        .await
        .with_context(|| prometheus.log())?;
        Ok(prometheus)
    }

    /// The end of Prometheus' log (for failure messages).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Json> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let (status, body) =
            crate::harness::http_get(&format!("{}{path}?{query}", self.url)).await?;
        let json: Json = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        ensure!(
            status == 200 && json["status"] == "success",
            "{path} {params:?}: {status} {body}"
        );
        Ok(json["data"].clone())
    }

    /// Every series `expr` returns at `at` (unix seconds).
    pub async fn query(&self, expr: &str, at: f64) -> Result<Vec<Series>> {
        let data = self
            .api(
                "/api/v1/query",
                &[("query", expr.to_string()), ("time", format!("{at:.3}"))],
            )
            .await?;
        parse_result(&data, "value")
    }

    /// Every series `expr` returns from `start` to `end`, evaluated every `step` seconds.
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Series>> {
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step}")),
                ],
            )
            .await?;
        parse_result(&data, "values")
    }

    /// The active targets: (job, health, last error).
    pub async fn targets(&self) -> Result<Vec<(String, String, String)>> {
        let data = self
            .api("/api/v1/targets", &[("state", "active".into())])
            .await?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn parse_result(data: &Json, key: &str) -> Result<Vec<Series>> {
    ensure!(
        data["resultType"] == "vector" || data["resultType"] == "matrix",
        "result {data}"
    );
    let number = |v: &Json| -> (f64, f64) {
        let t = v[0].as_f64().unwrap_or(0.0);
        let x = v[1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        (t, x)
    };
    Ok(data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Series {
            labels: r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            values: if key == "value" {
                vec![number(&r["value"])]
            } else {
                r["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(number)
                    .collect()
            },
        })
        .collect())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

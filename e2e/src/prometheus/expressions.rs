//! The expressions of the dashboard's panels and of the alerts: listed, their Grafana variables
//! replaced, and the series selectors they depend on.

use anyhow::{Context, Result, ensure};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// Every panel query of the dashboard: (panel title, expression as written).
pub fn dashboard_queries(dashboard: &Json) -> Vec<(String, String)> {
    fn walk(panels: &Json, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A dashboard expression with Grafana's variables replaced as Grafana would for one
/// namespace and policy, with `rate_interval` for `$__rate_interval`. Fails on any other
/// variable (the test could not run it as Grafana does).
pub fn substitute(
    expr: &str,
    namespace: &str,
    policy: &str,
    rate_interval: &str,
) -> Result<String> {
    let out = expr
        .replace("$__rate_interval", rate_interval)
        .replace("$namespace", namespace)
        .replace("$policy", policy);
    ensure!(!out.contains('$'), "unknown variable in {expr}");
    Ok(out)
}

/// Every alert of rule groups: (alert name, expression).
pub fn alerts(groups: &Yaml) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for group in groups.as_sequence().context("groups")? {
        for rule in group["rules"].as_sequence().context("rules")? {
            if let Some(alert) = rule["alert"].as_str() {
                let expr = rule["expr"].as_str().context("expr")?;
                out.push((alert.to_string(), expr.to_string()));
            }
        }
    }
    Ok(out)
}

/// The series selectors of an expression (metric name and optional `{matchers}`), found by
/// their metric prefixes: what must exist for the expression to mean anything.
pub fn selectors(expr: &str, prefixes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < expr.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word_start && prefixes.iter().any(|p| expr[i..].starts_with(p)) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            let mut selector = expr[i..end].to_string();
            let mut next = end;
            if expr[end..].starts_with('{') {
                let close = expr[end..].find('}').map_or(expr.len(), |n| end + n + 1);
                selector.push_str(&expr[end..close]);
                next = close;
            }
            if !out.contains(&selector) {
                out.push(selector);
            }
            i = next;
        } else {
            i += 1;
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_of_an_alert_expression() {
        let expr = r#"sum by (name) (increase(apiserver_admission_webhook_fail_open_count{name="x"}[10m])) > 0
          or (quiesce_operator_leader or vector(0)) < 1 and on (namespace) quiesce_operator_leader"#;
        assert_eq!(
            selectors(expr, &["quiesce_", "apiserver_"]),
            vec![
                r#"apiserver_admission_webhook_fail_open_count{name="x"}"#.to_string(),
                "quiesce_operator_leader".to_string(),
            ]
        );
    }

    #[test]
    fn grafana_variables_are_replaced_and_others_refused() {
        assert_eq!(
            substitute(
                r#"rate(x{namespace=~"$namespace", policy=~"$policy"}[$__rate_interval])"#,
                "ns",
                "web",
                "1m"
            )
            .unwrap(),
            r#"rate(x{namespace=~"ns", policy=~"web"}[1m])"#
        );
        assert!(substitute("x[$__range]", "ns", "web", "1m").is_err());
    }
}

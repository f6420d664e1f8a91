//! The JSON log line the operator and the sidecar both write (`--log-format json`, their
//! default): one object a line; the event's own fields at the top level beside `timestamp`,
//! `level`, `target` and `message`; and the span it was logged in as `span`, an object with the
//! span's `name` and fields (a reconcile's policy and namespace, a drain's trigger and pod).
//! One shape, so that one query of a log pipeline reads both.

use serde_json::Value;

/// `line` parsed, when it has that shape; else what is off. Each binary's test runs its own
/// logging setup through this.
pub fn check(line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    let object = v
        .as_object()
        .ok_or_else(|| format!("not an object: {line}"))?;
    for key in ["timestamp", "level", "target", "message"] {
        if !object.get(key).is_some_and(Value::is_string) {
            return Err(format!("no string `{key}` at the top level: {line}"));
        }
    }
    // tracing-subscriber's other shapes: fields nested, every enclosing span listed.
    for key in ["fields", "spans"] {
        if object.contains_key(key) {
            return Err(format!("`{key}` is not part of the shape: {line}"));
        }
    }
    if let Some(span) = object.get("span")
        && !span.get("name").is_some_and(Value::is_string)
    {
        return Err(format!("`span` without a `name`: {line}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_and_its_neighbours() {
        let ok = r#"{"timestamp":"2026-12-02T05:00:00Z","level":"INFO","target":"x","message":"m","n":1,"span":{"name":"reconcile","policy":"web"}}"#;
        assert_eq!(check(ok).unwrap()["span"]["policy"], "web");
        let nested = r#"{"timestamp":"t","level":"INFO","target":"x","fields":{"message":"m"}}"#;
        assert!(check(nested).unwrap_err().contains("message"));
        let listed = r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","spans":[]}"#;
        assert!(check(listed).unwrap_err().contains("spans"));
        let nameless = r#"{"timestamp":"t","level":"INFO","target":"x","message":"m","span":{}}"#;
        assert!(check(nameless).is_err());
        assert!(check("drain starting").is_err());
    }
}

//! The JSON log line the operator and the sidecar both write (`--log-format json`, their
//! default): one object a line; the event's own fields at the top level beside `timestamp`,
//! `level`, `target` and `message`; and the span it was logged in as `span`, an object with the
//! span's `name` and fields (a reconcile's policy and namespace, a drain's trigger and pod).
//! One shape, so that one query of a log pipeline reads both.

use serde_json::Value;

/// The JSON log lines written to `writer` in that shape: what the operator and the sidecar
/// install (with their own filter) when logging JSON.
#[cfg(feature = "logging")]
pub fn json_logs<W>(writer: W) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
        .finish()
}

/// `line` parsed, when it has that shape; else what is off. The shared setup's test and the
/// sidecar's loopback tests (the real binary's lines) read through this.
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

/// The sidecar's admin address from its start-up line (`"message":"admin server listening"`,
/// `"addr":…`), for tests and benchmarks that start the binary on port 0. `None` for any other
/// line, or a line not in the shape.
pub fn sidecar_admin_address(line: &str) -> Option<std::net::SocketAddr> {
    let v = check(line).ok()?;
    if v["message"] != "admin server listening" {
        return None;
    }
    v["addr"].as_str()?.parse().ok()
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

    #[test]
    fn the_sidecar_admin_address_is_read_from_its_start_up_line() {
        let line = r#"{"timestamp":"t","level":"INFO","message":"admin server listening","addr":"127.0.0.1:4191","target":"quiesce_sidecar::run"}"#;
        assert_eq!(
            sidecar_admin_address(line),
            Some("127.0.0.1:4191".parse().unwrap())
        );
        assert_eq!(
            sidecar_admin_address(&line.replace("admin server", "proxy")),
            None
        );
        assert_eq!(sidecar_admin_address("admin server listening"), None);
    }

    /// What the logging setup writes, kept for the test to read.
    #[cfg(feature = "logging")]
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    #[cfg(feature = "logging")]
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The setup both binaries install writes the shape, with the span as the operator's
    /// reconcile opens it (the sidecar's drain lines are read from the real binary in its
    /// loopback tests).
    #[cfg(feature = "logging")]
    #[test]
    fn json_logs_write_the_shape_with_the_current_span() {
        let lines = Lines::default();
        let writer = lines.clone();
        tracing::subscriber::with_default(json_logs(move || writer.clone()), || {
            let span = tracing::info_span!("reconcile", policy = "web", namespace = "shop");
            let _in = span.enter();
            tracing::info!(released = 2, "policy deleted; its held pods released");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line = check(text.trim()).unwrap();
        assert_eq!(line["message"], "policy deleted; its held pods released");
        assert_eq!(line["released"], 2);
        assert_eq!(line["span"]["name"], "reconcile");
        assert_eq!(line["span"]["policy"], "web");
        assert_eq!(line["span"]["namespace"], "shop");
    }
}

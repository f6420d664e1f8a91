//! List-then-watch of a collection, as client-go's reflector: list, watch from the list's
//! resourceVersion (with bookmarks), resume from the last version seen when a watch ends or
//! breaks, list again when the apiserver says that version is gone (410), back off after
//! errors.

use std::{collections::VecDeque, time::Duration};

use bytes::BytesMut;
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, de::DeserializeOwned};

use super::{ApiClient, Error, types::List, types::Object};

/// Ends every watch request on the server side after this long, as client-go does (it picks
/// 5–10 min); the watch then resumes from its last version.
const WATCH_SECONDS: u64 = 290;
/// With bookmarks the apiserver sends something about every minute; a watch silent for
/// longer than its own timeout is a dead connection.
const SILENT_LIMIT: Duration = Duration::from_secs(WATCH_SECONDS + 15);
const LIST_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a watch learned.
#[derive(Debug)]
pub enum Event<K> {
    /// A full list: everything that exists now (replaces what was known).
    Listed(Vec<K>),
    /// An object was added or changed.
    Applied(K),
    /// An object was deleted (its last state).
    Deleted(K),
}

enum State {
    /// The next call lists.
    List,
    /// The next call starts a watch from this version.
    Watch { version: String },
    /// A watch is streaming.
    Streaming {
        version: String,
        body: Incoming,
        buffer: BytesMut,
    },
}

/// A never-ending watch of a collection; [`Watcher::next`] yields its events and errors
/// (after an error the next call backs off, then goes on).
pub struct Watcher<K> {
    client: ApiClient,
    /// The collection path.
    path: String,
    field_selector: Option<String>,
    state: State,
    pending: VecDeque<Event<K>>,
    backoff: Option<Duration>,
}

impl<K> std::fmt::Debug for Watcher<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("path", &self.path).finish()
    }
}

/// One line of a watch response.
#[derive(Deserialize)]
struct WatchLine {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// What one watch line means.
#[derive(Debug)]
pub enum Line<K> {
    Event(Event<K>, String),
    /// A bookmark: nothing changed up to this version.
    Bookmark(String),
    /// The version the watch started from is gone: list again.
    Expired,
    /// An `ERROR` line other than 410.
    Failed(Error),
}

/// Decodes one line of a watch response (pure).
pub fn parse_line<K: DeserializeOwned + Object>(line: &[u8]) -> Result<Line<K>, Error> {
    let WatchLine { kind, object } = serde_json::from_slice(line)?;
    let version = |o: &serde_json::Value| {
        o.pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(match kind.as_str() {
        "ADDED" | "MODIFIED" => {
            let v = version(&object);
            Line::Event(Event::Applied(serde_json::from_value(object)?), v)
        }
        "DELETED" => {
            let v = version(&object);
            Line::Event(Event::Deleted(serde_json::from_value(object)?), v)
        }
        "BOOKMARK" => Line::Bookmark(version(&object)),
        _ => {
            let code = object.get("code").and_then(|c| c.as_u64()).unwrap_or(0) as u16;
            if code == 410 {
                Line::Expired
            } else {
                Line::Failed(Error::Status {
                    code,
                    message: object
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or(&kind)
                        .to_string(),
                })
            }
        }
    })
}

impl<K: DeserializeOwned + Object> Watcher<K> {
    /// Watches the collection at `path` (optionally only objects matching `field_selector`).
    pub fn new(client: ApiClient, path: String, field_selector: Option<String>) -> Self {
        Self {
            client,
            path,
            field_selector,
            state: State::List,
            pending: VecDeque::new(),
            backoff: None,
        }
    }

    /// The next event, or the error that interrupted the watch (the call after it retries).
    pub async fn next(&mut self) -> Result<Event<K>, Error> {
        if let Some(delay) = self.backoff {
            tokio::time::sleep(delay).await;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.backoff = None;
                return Ok(event);
            }
            if let Err(e) = self.step().await {
                self.backoff = Some(
                    self.backoff
                        .map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX)),
                );
                return Err(e);
            }
        }
    }

    fn query(&self, watch_from: Option<&str>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &self.field_selector {
            q.append_pair("fieldSelector", s);
        }
        if let Some(version) = watch_from {
            q.append_pair("watch", "true");
            q.append_pair("resourceVersion", version);
            q.append_pair("allowWatchBookmarks", "true");
            q.append_pair("timeoutSeconds", &WATCH_SECONDS.to_string());
        }
        format!("{}?{}", self.path, q.finish())
    }

    /// Advances the state machine by one request or one chunk of a watch; queues what it
    /// learns in `pending`.
    async fn step(&mut self) -> Result<(), Error> {
        match std::mem::replace(&mut self.state, State::List) {
            State::List => {
                let list: List<K> =
                    tokio::time::timeout(LIST_TIMEOUT, self.client.get(&self.query(None)))
                        .await
                        .map_err(|_| Error::Silent(LIST_TIMEOUT))??;
                self.state = State::Watch {
                    version: list.metadata.resource_version.unwrap_or_default(),
                };
                self.pending.push_back(Event::Listed(list.items));
            }
            State::Watch { version } => {
                // Until the watch answers, a failure resumes from the same version.
                self.state = State::Watch {
                    version: version.clone(),
                };
                let path = self.query(Some(&version));
                let resp = tokio::time::timeout(
                    LIST_TIMEOUT,
                    self.client
                        .send(Method::GET, &path, None, Default::default()),
                )
                .await
                .map_err(|_| Error::Silent(LIST_TIMEOUT))??;
                if resp.status() == http::StatusCode::GONE {
                    self.state = State::List;
                    return Ok(());
                }
                if !resp.status().is_success() {
                    return Err(super::failure(resp).await);
                }
                self.state = State::Streaming {
                    version,
                    body: resp.into_body(),
                    buffer: BytesMut::new(),
                };
            }
            State::Streaming {
                mut version,
                mut body,
                mut buffer,
            } => {
                let frame = match tokio::time::timeout(SILENT_LIMIT, body.frame()).await {
                    Err(_) => {
                        self.state = State::Watch { version };
                        return Err(Error::Silent(SILENT_LIMIT));
                    }
                    // The server ended the watch (its timeout): resume.
                    Ok(None) => {
                        self.state = State::Watch { version };
                        return Ok(());
                    }
                    Ok(Some(Err(e))) => {
                        self.state = State::Watch { version };
                        return Err(e.into());
                    }
                    Ok(Some(Ok(frame))) => frame,
                };
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line = buffer.split_to(end + 1);
                    let line = &line[..end];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match parse_line::<K>(line) {
                        Ok(Line::Event(event, v)) => {
                            self.pending.push_back(event);
                            // Never resume from "": that watch would start at "now" with a
                            // synthetic ADDED for every object.
                            if !v.is_empty() {
                                version = v;
                            }
                        }
                        Ok(Line::Bookmark(v)) if !v.is_empty() => version = v,
                        Ok(Line::Bookmark(_)) => {}
                        Ok(Line::Expired) => {
                            self.state = State::List;
                            return Ok(());
                        }
                        Ok(Line::Failed(e)) | Err(e) => {
                            self.state = State::Watch { version };
                            return Err(e);
                        }
                    }
                }
                self.state = State::Streaming {
                    version,
                    body,
                    buffer,
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fake, types::Pod};
    use super::*;
    use serde_json::json;

    fn names(e: &Event<Pod>) -> (&'static str, Vec<String>) {
        match e {
            Event::Listed(l) => (
                "listed",
                l.iter().map(|p| p.metadata.name.clone()).collect(),
            ),
            Event::Applied(p) => ("applied", vec![p.metadata.name.clone()]),
            Event::Deleted(p) => ("deleted", vec![p.metadata.name.clone()]),
        }
    }

    #[test]
    fn lines_become_events_bookmarks_relists_and_errors() {
        let l = |v: serde_json::Value| parse_line::<Pod>(v.to_string().as_bytes()).unwrap();
        let pod = json!({"metadata": {"name": "a", "resourceVersion": "5"}});
        assert!(
            matches!(l(json!({"type": "MODIFIED", "object": pod})), Line::Event(Event::Applied(p), v) if p.metadata.name == "a" && v == "5")
        );
        assert!(matches!(
            l(json!({"type": "DELETED", "object": pod})),
            Line::Event(Event::Deleted(_), _)
        ));
        assert!(matches!(
            l(json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})),
            Line::Bookmark(v) if v == "9"
        ));
        assert!(matches!(
            l(
                json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}})
            ),
            Line::Expired
        ));
        assert!(
            matches!(l(json!({"type": "ERROR", "object": {"code": 500, "message": "etcd down"}})), Line::Failed(e) if e.to_string().contains("etcd down"))
        );
        assert!(parse_line::<Pod>(b"{not json").is_err());
    }

    /// The fake serves: list (version 1: a, b), a watch from 1 that sends two events split
    /// across chunks and a bookmark then ends, a watch from 3 that says 410, a second list
    /// (version 7: c), and watches from 7 that stay open.
    #[tokio::test]
    async fn lists_watches_resumes_and_relists_on_410() {
        let fake = fake::FakeApiserver::start(|req| {
            let q = req.path_and_query.as_str();
            assert!(q.starts_with("/api/v1/namespaces/shop/pods?fieldSelector=metadata.name%3Dweb-1"), "{q}");
            let lists = req.seen_before(|r| !r.path_and_query.contains("watch=true"));
            if !q.contains("watch=true") {
                let (v, items) = if lists == 0 { ("1", json!([{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}])) } else { ("7", json!([{"metadata": {"name": "c"}}])) };
                return fake::Reply::json(200, json!({"metadata": {"resourceVersion": v}, "items": items}));
            }
            assert!(q.contains("allowWatchBookmarks=true"), "{q}");
            if q.contains("resourceVersion=1&") {
                let added = json!({"type": "ADDED", "object": {"metadata": {"name": "d", "resourceVersion": "2"}}}).to_string();
                let deleted = json!({"type": "DELETED", "object": {"metadata": {"name": "a", "resourceVersion": "3"}}}).to_string();
                let (first, second) = added.split_at(10);
                fake::Reply::chunks(vec![first.to_string(), format!("{second}\n{deleted}\n"), json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}}).to_string() + "\n"])
            } else if q.contains("resourceVersion=3&") {
                fake::Reply::chunks(vec![json!({"type": "ERROR", "object": {"code": 410}}).to_string() + "\n"])
            } else {
                assert!(q.contains("resourceVersion=7&"), "{q}");
                fake::Reply::open()
            }
        })
        .await;
        let client = ApiClient::for_tests(&fake.base);
        let mut w: Watcher<Pod> = Watcher::new(
            client,
            "/api/v1/namespaces/shop/pods".into(),
            Some("metadata.name=web-1".into()),
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            let e = tokio::time::timeout(Duration::from_secs(5), w.next())
                .await
                .expect("an event")
                .expect("no error");
            seen.push(names(&e));
        }
        let s = |x: &str| x.to_string();
        assert_eq!(
            seen,
            vec![
                ("listed", vec![s("a"), s("b")]),
                ("applied", vec![s("d")]),
                ("deleted", vec![s("a")]),
                ("listed", vec![s("c")]),
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_list_is_an_error_then_retried_after_a_backoff() {
        let fake = fake::FakeApiserver::start(|req| {
            if req.seen_before(|_| true) == 0 {
                fake::Reply::json(500, json!({"message": "etcd unavailable"}))
            } else if req.path_and_query.contains("watch=true") {
                fake::Reply::open()
            } else {
                fake::Reply::json(
                    200,
                    json!({"metadata": {"resourceVersion": "1"}, "items": []}),
                )
            }
        })
        .await;
        let mut w: Watcher<Pod> = Watcher::new(
            ApiClient::for_tests(&fake.base),
            "/api/v1/namespaces/shop/pods".into(),
            None,
        );
        let e = w.next().await.unwrap_err();
        assert!(e.to_string().contains("etcd unavailable"), "{e}");
        let started = std::time::Instant::now();
        assert!(matches!(w.next().await, Ok(Event::Listed(l)) if l.is_empty()));
        assert!(started.elapsed() >= BACKOFF_MIN, "backed off");
    }
}

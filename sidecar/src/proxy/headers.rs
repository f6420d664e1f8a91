//! Header rules of a forwarding proxy (RFC 9110 §7.6.1): hop-by-hop headers describe one
//! connection and are removed before a message is forwarded on another; an upgrade keeps the
//! two headers that ask for it. Pure.

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderValue,
    header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE},
};

/// Hop-by-hop headers always removed (besides those named in `Connection`). The
/// `Proxy-Authenticate`/`Proxy-Authorization` pair is left alone: this proxy is meant to be
/// invisible, and does not authenticate.
const HOP_BY_HOP: [&str; 4] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Whether `headers` ask for a protocol upgrade (`Connection: upgrade` and `Upgrade: ...`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers. With `upgrade`, `Connection: upgrade` and `Upgrade` are kept
/// (the upgrade must reach the other side). `TE: trailers` is kept: it is what gRPC sends to
/// say it understands trailers, and HTTP/2 allows exactly that value.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let upgrade_value = headers.get(UPGRADE).cloned();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        if name != "te" {
            headers.remove(name);
        }
    }
    headers.remove(CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    let trailers_only = headers
        .get_all(TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(TE);
    }
    if upgrade && let Some(u) = upgrade_value {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, u);
    }
}

/// Appends `client` to `X-Forwarded-For` (the app now sees the proxy as its peer).
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let ip = client.to_canonical().to_string();
    let value = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("host", "example.com"),
            ("connection", "keep-alive, X-Trace-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-trace-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("te", "gzip"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-type", "host"]);
    }

    #[test]
    fn te_trailers_survives_for_grpc() {
        let mut h = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.get(TE).unwrap(), "trailers");
    }

    #[test]
    fn upgrade_keeps_its_two_headers() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        // Without the upgrade flag they go like any hop-by-hop header.
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&map(&[("connection", "keep-alive")])));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1");
        append_forwarded_for(&mut h, "::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.1, 10.0.0.2");
    }
}

//! Which protocol a new connection speaks, told from its first bytes without consuming them
//! (`peek`), so the bytes still reach whichever server handles the connection.
//!
//! Only HTTP is proxied as HTTP: anything else — TLS (`0x16`), a database protocol — is
//! forwarded byte for byte (L4 passthrough), which is always correct, only less drain-aware.
//!
//! A *silent* connection is waited for without a bound: HTTP client pools dial connections
//! ahead of need (hyper's pool races a new dial against an idle connection coming back, Go's
//! transport keeps spares) and send nothing on them for as long as they sit in the pool. Taking
//! silence for a server-speaks-first protocol would turn those into tunnels the drain can never
//! end. Server-speaks-first protocols are therefore not supported behind the proxy.

use std::time::Duration;

use tokio::net::TcpStream;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest HTTP/1 method accepted (longest registered ones are ~17 bytes).
const MAX_METHOD: usize = 20;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface (h2c).
    Http2,
    /// Not HTTP: forward bytes as they are.
    Other,
    /// Too few bytes to tell.
    NeedMore,
}

/// Classifies the bytes received so far. Pure.
pub fn classify(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        // "PRI" could in theory start an HTTP/1 method; the full preface settles it.
        return if n == H2_PREFACE.len() {
            Sniff::Http2
        } else {
            Sniff::NeedMore
        };
    }
    // HTTP/1 request line: METHOD SP request-target ...; methods are upper-case tokens.
    let method_len = buf
        .iter()
        .take(MAX_METHOD + 1)
        .position(|&b| !(b.is_ascii_uppercase() || b == b'-' || b == b'_'));
    match method_len {
        None if buf.len() <= MAX_METHOD => Sniff::NeedMore,
        None | Some(0) => Sniff::Other,
        Some(m) if buf[m] != b' ' => Sniff::Other,
        Some(m) => match buf.get(m + 1) {
            None => Sniff::NeedMore,
            // origin-form `/`, asterisk-form `*`, absolute- or authority-form (a letter/digit).
            Some(b'/' | b'*') => Sniff::Http1,
            Some(b) if b.is_ascii_alphanumeric() => Sniff::Http1,
            Some(_) => Sniff::Other,
        },
    }
}

/// Peeks at `stream` until [`classify`] decides. `None`: the client closed without sending
/// anything. The first byte is waited for without a bound (see the module's header); once bytes
/// arrived, `timeout` bounds the rest: then bytes that look like the start of an HTTP request
/// count as HTTP/1, anything else as [`Sniff::Other`].
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<Sniff> {
    let mut one = [0u8; 1];
    match stream.peek(&mut one).await {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 32];
    let mut seen = 0;
    let timed_out = |seen: &[u8]| match classify(seen) {
        Sniff::NeedMore if !seen.is_empty() => Sniff::Http1,
        Sniff::NeedMore => Sniff::Other,
        s => s,
    };
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) => return (seen > 0).then_some(Sniff::Other),
            Ok(Ok(n)) => {
                seen = n;
                match classify(&buf[..n]) {
                    Sniff::NeedMore if n < buf.len() => {}
                    Sniff::NeedMore => return Some(Sniff::Other),
                    s => return Some(s),
                }
            }
            Ok(Err(_)) => return None,
            Err(_) => return Some(timed_out(&buf[..seen])),
        }
        // More bytes are on their way; `peek` returns at once while some are buffered.
        if tokio::time::Instant::now() >= deadline {
            return Some(timed_out(&buf[..seen]));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(classify(b"POST /x"), Sniff::Http1);
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Sniff::Http1);
        assert_eq!(classify(b"CONNECT example.com:443 HTTP/1.1"), Sniff::Http1);
        assert_eq!(classify(b"GET http://a/ HTTP/1.1"), Sniff::Http1);
        assert_eq!(classify(b"PRIX / HTTP/1.1"), Sniff::Http1);
    }

    #[test]
    fn h2_preface_needs_every_byte() {
        assert_eq!(classify(H2_PREFACE), Sniff::Http2);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Sniff::Http2
        );
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Sniff::NeedMore);
        assert_eq!(classify(b"P"), Sniff::NeedMore);
    }

    #[test]
    fn partial_input_waits() {
        assert_eq!(classify(b""), Sniff::NeedMore);
        assert_eq!(classify(b"GE"), Sniff::NeedMore);
        assert_eq!(classify(b"GET "), Sniff::NeedMore);
    }

    #[test]
    fn other_protocols_are_passed_through() {
        // TLS ClientHello record.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniff::Other);
        // Redis inline command, lower-case text, binary.
        assert_eq!(classify(b"PING\r\n"), Sniff::Other);
        assert_eq!(classify(b"get / HTTP/1.1"), Sniff::Other);
        assert_eq!(classify(&[0, 0, 0, 8, 4, 210, 22, 47]), Sniff::Other);
        assert_eq!(classify(b"GET  /"), Sniff::Other);
        assert_eq!(classify(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Sniff::Other);
    }

    #[tokio::test]
    async fn sniffing_a_live_socket() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Split request line: decided once the second part arrives.
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GE").await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"T / HTTP/1.1\r\n\r\n").await.unwrap();
            c
        });
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(sniff(&s, Duration::from_secs(5)).await, Some(Sniff::Http1));
        let _c = client.await.unwrap();
        // A silent client (a pooled connection dialed ahead of need) is waited for, not
        // taken for a server-speaks-first protocol.
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(
            tokio::time::timeout(
                Duration::from_millis(200),
                sniff(&s, Duration::from_millis(50))
            )
            .await
            .is_err(),
            "a silent connection must not be classified"
        );
        // A client that closes at once.
        drop(TcpStream::connect(addr).await.unwrap());
        let (s, _) = l.accept().await.unwrap();
        assert_eq!(sniff(&s, Duration::from_secs(5)).await, None);
    }
}

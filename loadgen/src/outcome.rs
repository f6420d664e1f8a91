//! How one request ended: the [`Outcome`] an error is classified into, and the [`Record`]
//! of one request that the summary adds up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx with the whole body read.
    Ok,
    /// A complete answer with a non-2xx status.
    HttpStatus(u16),
    /// Connection reset or closed before the answer was complete.
    Reset,
    /// Connection refused.
    Refused,
    /// HTTP/2: the server's GOAWAY left this stream out (it was not processed); a gRPC client
    /// would retry such a request transparently, so a graceful drain should never cause one.
    #[serde(rename = "goaway")]
    GoAway,
    /// HTTP/2: the server reset the stream with `REFUSED_STREAM` (not processed).
    StreamRefused,
    /// No answer within the timeout.
    Timeout,
    /// No active target to send to.
    NoTarget,
    /// Anything else.
    Other(String),
}

/// Classifies a request error by walking its source chain. With `QUIESCE_LOADGEN_DEBUG` set,
/// each error's whole chain goes to stderr with the time (how the GOAWAY races were found).
pub fn classify(err: &(dyn std::error::Error + 'static)) -> Outcome {
    if std::env::var_os("QUIESCE_LOADGEN_DEBUG").is_some() {
        let mut chain = err.to_string();
        let mut cur = err.source();
        while let Some(e) = cur {
            chain.push_str(&format!(": {e} [{e:?}]"));
            cur = e.source();
        }
        eprintln!(
            "loadgen error at {:?}: {chain}",
            std::time::SystemTime::now()
        );
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut incomplete = false;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return Outcome::Refused,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
                    return Outcome::Reset;
                }
                TimedOut => return Outcome::Timeout,
                _ => {}
            }
            // A wrapping io::Error's source() skips the wrapped error itself.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        if let Some(h) = e.downcast_ref::<h2::Error>() {
            if h.is_go_away() {
                return Outcome::GoAway;
            }
            if h.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Outcome::StreamRefused;
            }
            if h.is_reset() {
                return Outcome::Reset;
            }
            if let Some(io) = h.get_io() {
                cur = Some(io);
                continue;
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            incomplete = true;
        }
        cur = e.source();
    }
    if incomplete {
        Outcome::Reset
    } else {
        Outcome::Other(err.to_string())
    }
}

pub(crate) struct Record {
    pub(crate) target: String,
    pub(crate) path: String,
    pub(crate) slow: bool,
    pub(crate) outcome: Outcome,
    pub(crate) status: Option<u16>,
    pub(crate) version: Option<String>,
    pub(crate) latency: Duration,
    /// Launch time after the run's start.
    pub(crate) launched: Duration,
    /// Sent again after a reused connection ended before its response ([`crate::reuse`]).
    pub(crate) retried: bool,
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            classify(&Error::from(ErrorKind::ConnectionRefused)),
            Outcome::Refused
        );
        assert_eq!(
            classify(&Error::from(ErrorKind::ConnectionReset)),
            Outcome::Reset
        );
        assert_eq!(
            classify(&Error::from(ErrorKind::UnexpectedEof)),
            Outcome::Reset
        );
        // Wrapped errors are found through the source chain.
        let wrapped = Error::other(Error::from(ErrorKind::BrokenPipe));
        assert_eq!(classify(&wrapped), Outcome::Reset);
        assert!(matches!(
            classify(&Error::other("weird")),
            Outcome::Other(_)
        ));
        // HTTP/2 stream errors, as hyper wraps them.
        let refused = Error::other(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(classify(&refused), Outcome::StreamRefused);
    }
}

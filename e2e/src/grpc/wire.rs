//! The gRPC wire format, pure: a message framed with its 5-byte prefix, a body split back into
//! messages, and the call's `grpc-status`.

use hyper::{HeaderMap, body::Bytes};

/// One length-prefixed, uncompressed gRPC message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f.into()
}

/// Splits a body arriving in arbitrary chunks into gRPC messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    /// Adds bytes; returns the messages completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(head) = self.buf.get(..5) {
            if head[0] != 0 {
                return Err("compressed message".into());
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if self.buf.len() < 5 + len {
                break;
            }
            out.push(self.buf[5..5 + len].to_vec());
            self.buf.drain(..5 + len);
        }
        Ok(out)
    }

    /// Whether a message is cut short (bytes left over).
    pub fn partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// `grpc-status` from the trailers, else from the headers (a trailers-only answer).
pub fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<u32> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deframes_messages_split_anywhere() {
        let mut wire = frame(b"one").to_vec();
        wire.extend_from_slice(&frame(b""));
        wire.extend_from_slice(&frame(&[9; 70_000]));
        for piece in [1, 3, 5, 6, 4096, wire.len()] {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            for c in wire.chunks(piece) {
                got.extend(d.push(c).unwrap());
            }
            assert_eq!(got.len(), 3, "piece {piece}");
            assert_eq!(
                (&got[0][..], got[1].len(), got[2].len()),
                (&b"one"[..], 0, 70_000)
            );
            assert!(!d.partial());
        }
        let mut d = Deframer::default();
        assert!(d.push(&wire[..7]).unwrap().is_empty() && d.partial());
        assert!(Deframer::default().push(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn status_comes_from_trailers_or_headers() {
        let mut h = HeaderMap::new();
        let mut t = HeaderMap::new();
        assert_eq!(grpc_status(&h, Some(&t)), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h, None), Some(14));
        t.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&h, Some(&t)), Some(0));
    }
}

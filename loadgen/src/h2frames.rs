//! Watches the HTTP/2 frames a server sends, to see its GOAWAYs.
//!
//! hyper's HTTP/2 client handles a GOAWAY internally and tells the caller nothing until a
//! stream fails or the connection ends. A zero-loss test wants to know that the server asked
//! the client to go away (a graceful drain) even when no request failed, and a gRPC-like
//! channel must stop opening streams on such a connection at once, the way grpc-go moves a
//! subchannel away on GOAWAY. So the client's read side is wrapped in [`Sniffed`], which feeds
//! every byte through a [`FrameScanner`]: a tiny state machine over frame headers (9 bytes:
//! 24-bit length, type, flags, stream id) that skips payloads. A server sends no preface magic,
//! so its byte stream is frames from the first byte on.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// HTTP/2 frame type of GOAWAY (RFC 9113 §6.8).
pub const GOAWAY: u8 = 0x7;

/// Finds frame boundaries in a byte stream fed in arbitrary pieces.
#[derive(Debug, Clone, Default)]
pub struct FrameScanner {
    head: [u8; 9],
    have: usize,
    skip: usize,
}

impl FrameScanner {
    /// Feeds the next bytes; calls `on_frame(type)` for every frame whose header completed.
    pub fn feed(&mut self, mut buf: &[u8], mut on_frame: impl FnMut(u8)) {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                continue;
            }
            let n = (9 - self.have).min(buf.len());
            self.head[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            buf = &buf[n..];
            if self.have == 9 {
                self.have = 0;
                self.skip = usize::from(self.head[0]) << 16
                    | usize::from(self.head[1]) << 8
                    | usize::from(self.head[2]);
                on_frame(self.head[3]);
            }
        }
    }
}

/// What was seen on one connection; shared between the connection and its owner.
#[derive(Debug, Default)]
pub struct ConnWatch {
    goaway: AtomicBool,
    ended: AtomicBool,
    goaway_frames: AtomicU64,
}

impl ConnWatch {
    /// Whether the server sent at least one GOAWAY.
    pub fn goaway(&self) -> bool {
        self.goaway.load(Ordering::Acquire)
    }

    /// GOAWAY frames the server sent (a graceful shutdown usually sends two).
    pub fn goaway_frames(&self) -> u64 {
        self.goaway_frames.load(Ordering::Relaxed)
    }

    /// Whether the connection is over (its driver returned).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Marks the connection over.
    pub fn set_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    /// Records one frame header; returns true for the connection's first GOAWAY.
    fn frame(&self, ty: u8) -> bool {
        if ty != GOAWAY {
            return false;
        }
        self.goaway_frames.fetch_add(1, Ordering::Relaxed);
        !self.goaway.swap(true, Ordering::AcqRel)
    }
}

/// An I/O stream whose incoming bytes are scanned for HTTP/2 frames.
pub struct Sniffed<T> {
    inner: T,
    scanner: FrameScanner,
    watch: Arc<ConnWatch>,
    on_first_goaway: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<T> Sniffed<T> {
    /// Wraps `inner`; `on_first_goaway` runs once, when the first GOAWAY header arrives.
    pub fn new(
        inner: T,
        watch: Arc<ConnWatch>,
        on_first_goaway: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            scanner: FrameScanner::default(),
            watch,
            on_first_goaway: Some(Box::new(on_first_goaway)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if res.is_ready() {
            let watch = &this.watch;
            let mut first = false;
            this.scanner
                .feed(&buf.filled()[before..], |ty| first |= watch.frame(ty));
            if first && let Some(f) = this.on_first_goaway.take() {
                f();
            }
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            ty,
            0,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_frames_fed_in_any_pieces() {
        let mut stream = frame(0x4, &[0; 12]); // SETTINGS
        stream.extend(frame(0x1, &[7; 300])); // HEADERS
        stream.extend(frame(GOAWAY, &[0; 8]));
        stream.extend(frame(0x0, &[])); // empty DATA
        stream.extend(frame(GOAWAY, &[0; 8]));
        for piece in [1, 2, 5, 9, 10, 64, stream.len()] {
            let mut s = FrameScanner::default();
            let mut seen = Vec::new();
            for chunk in stream.chunks(piece) {
                s.feed(chunk, |t| seen.push(t));
            }
            assert_eq!(seen, vec![0x4, 0x1, GOAWAY, 0x0, GOAWAY], "piece {piece}");
        }
    }

    #[test]
    fn a_payload_that_looks_like_a_header_is_skipped() {
        let mut s = FrameScanner::default();
        let mut seen = Vec::new();
        s.feed(&frame(0x0, &frame(GOAWAY, &[0; 8])), |t| seen.push(t));
        assert_eq!(seen, vec![0x0]);
    }

    #[tokio::test]
    async fn sniffed_reads_pass_through_and_count_goaways() {
        use tokio::io::AsyncReadExt;
        let mut bytes = frame(0x4, &[]);
        bytes.extend(frame(GOAWAY, &[0; 8]));
        bytes.extend(frame(GOAWAY, &[0; 8]));
        let watch = Arc::new(ConnWatch::default());
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let mut s = Sniffed::new(&bytes[..], watch.clone(), move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, bytes);
        assert!(watch.goaway());
        assert_eq!(watch.goaway_frames(), 2);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}

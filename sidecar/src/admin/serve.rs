//! Serving the admin endpoints to anyone on the pod network without letting them starve the
//! kubelet: bounded connections per peer address and in total, a bound on reading a request
//! head, small header buffers, and no keep-alive (every caller — kubelet probes, the preStop
//! hook, a scraper — is served one request per connection, so no idle connection holds a slot).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::AdminState;

/// How many connections one peer address may hold at once (the kubelet's probes and hook come
/// from the node's address and need a few).
pub const PER_PEER_CONNECTIONS: usize = 16;
/// How many connections the admin server holds at once.
pub const TOTAL_CONNECTIONS: usize = 256;
/// Longest time to read a request head.
pub const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head buffered (hyper's minimum).
const MAX_HEAD_BUFFER: usize = 8192;

/// Connection slots by peer address: a pure counter, so its rule is testable alone.
#[derive(Debug, Default)]
pub struct Slots {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
}

impl Slots {
    /// Takes a slot for `peer`, or `false` when the peer or the server is at its bound.
    pub fn try_take(&mut self, peer: IpAddr) -> bool {
        let n = self.by_peer.entry(peer).or_default();
        if *n >= PER_PEER_CONNECTIONS || self.total >= TOTAL_CONNECTIONS {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }

    /// Gives back a slot of `peer`.
    pub fn give_back(&mut self, peer: IpAddr) {
        if let Some(n) = self.by_peer.get_mut(&peer) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }
}

/// A taken slot, given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().expect("slots lock").give_back(self.peer);
    }
}

/// Serves the admin endpoints ([`super::handle`]) on `listener` until the listener fails;
/// `on_accept` runs for every accepted connection (before the slot check: the drain counts the
/// kernel's handshakes).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    on_accept: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BUFFER)
        .keep_alive(false);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            // Out of file descriptors and the like: back off, keep serving.
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %e, "admin accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        on_accept();
        let ip = canonical(peer.ip());
        if !slots.lock().expect("slots lock").try_take(ip) {
            tracing::debug!(%peer, "admin connection refused: too many connections");
            drop(stream);
            continue;
        }
        let slot = Slot {
            slots: slots.clone(),
            peer: ip,
        };
        tokio::spawn(serve_one(
            builder.clone(),
            stream,
            peer,
            state.clone(),
            slot,
        ));
    }
}

async fn serve_one(
    builder: http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    state: AdminState,
    _slot: Slot,
) {
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(super::handle(state, peer, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// An IPv4-mapped IPv6 address counts as the IPv4 address (dual-stack listeners).
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        ip => ip,
    }
}

const ENFILE: i32 = 23;
const EMFILE: i32 = 24;

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_bound_each_peer_and_the_total() {
        let mut s = Slots::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let node: IpAddr = "10.0.0.254".parse().unwrap();
        for _ in 0..PER_PEER_CONNECTIONS {
            assert!(s.try_take(a));
        }
        assert!(!s.try_take(a), "one peer is bounded");
        assert!(s.try_take(node), "another peer still gets in");
        s.give_back(a);
        assert!(s.try_take(a), "a slot given back is free again");
        // The total bound, across many peers.
        let mut s = Slots::default();
        let mut taken = 0;
        for i in 0..=255u8 {
            for _ in 0..2 {
                taken += usize::from(s.try_take(IpAddr::from([10, 1, 0, i])));
            }
        }
        assert_eq!(taken, TOTAL_CONNECTIONS);
        assert!(!s.try_take(node));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
    }
}

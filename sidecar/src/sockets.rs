//! The shared network namespace's TCP socket table, and what the drain reads from it.
//!
//! Sources: `sock_diag` netlink (with per-socket `tcp_info`), falling back to `/proc/net/tcp`
//! and `/proc/net/tcp6` (no per-socket activity, so every established connection counts as
//! busy). The netns-wide `PassiveOpens` counter comes from `/proc/net/snmp`.
//!
//! The decisions — which socket is busy, whether new connections arrived — are pure functions
//! of snapshots, tested with real captured samples.

pub mod diag;
pub mod proc;
#[cfg(test)]
mod tests;

use std::{collections::HashSet, net::SocketAddr};

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TcpState {
    /// 1
    Established,
    /// 2
    SynSent,
    /// 3
    SynRecv,
    /// 4
    FinWait1,
    /// 5
    FinWait2,
    /// 6
    TimeWait,
    /// 7
    Close,
    /// 8
    CloseWait,
    /// 9
    LastAck,
    /// 10
    Listen,
    /// 11
    Closing,
    /// Anything else (e.g. 12, `TCP_NEW_SYN_RECV`).
    Other(u8),
}

impl From<u8> for TcpState {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            o => Self::Other(o),
        }
    }
}

/// Per-socket activity from `tcp_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Milliseconds since data was last sent.
    pub last_data_sent_ms: u32,
    /// Milliseconds since data was last received.
    pub last_data_recv_ms: u32,
    /// Bytes sent and acknowledged by the peer.
    pub bytes_acked: u64,
    /// Bytes received.
    pub bytes_received: u64,
}

/// One TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    /// Local address.
    pub local: SocketAddr,
    /// Remote address.
    pub remote: SocketAddr,
    /// State.
    pub state: TcpState,
    /// Bytes queued to send (unsent or unacknowledged).
    pub tx_queue: u32,
    /// Bytes received but not read by the app.
    pub rx_queue: u32,
    /// Socket inode (0 for TIME_WAIT and request sockets).
    pub inode: u64,
    /// Unique socket cookie (sock_diag only).
    pub cookie: Option<u64>,
    /// Activity (sock_diag only).
    pub activity: Option<Activity>,
}

impl SocketEntry {
    /// A key that tells sockets apart across snapshots: the cookie, else inode and addresses.
    fn key(&self) -> (u64, u64, SocketAddr) {
        match self.cookie {
            Some(c) => (c, 0, self.remote),
            None => (0, self.inode, self.remote),
        }
    }

    /// Whether this socket is an inbound connection to one of `ports` (not a listener, not
    /// the app's own outbound connection).
    pub fn is_inbound_on(&self, ports: &[u16]) -> bool {
        self.state != TcpState::Listen && ports.contains(&self.local.port())
    }

    /// Whether the connection carries in-flight work.
    ///
    /// Queued bytes in either direction mean work. Otherwise, with `tcp_info`, HTTP-like
    /// request/response traffic is read from the order of the last data events: data received
    /// after the last data sent is a request waiting for its answer; a connection whose last
    /// data event was sending (or that never received anything) is an idle keep-alive and does
    /// not hold the drain. Times have jiffy resolution: a tie counts as idle, since a request
    /// answered within the same few milliseconds is by far the common case. Without
    /// `tcp_info` every established connection counts as busy.
    pub fn is_busy(&self) -> bool {
        if !matches!(self.state, TcpState::Established | TcpState::CloseWait) {
            return false;
        }
        if self.tx_queue > 0 || self.rx_queue > 0 {
            return true;
        }
        match self.activity {
            None => true,
            Some(a) if a.bytes_received == 0 => false,
            Some(a) if a.bytes_acked == 0 => true,
            Some(a) => a.last_data_recv_ms < a.last_data_sent_ms,
        }
    }
}

/// Where a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// sock_diag netlink with tcp_info.
    SockDiag,
    /// /proc/net/tcp{,6}.
    Proc,
}

/// The socket table at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every TCP socket of the namespace.
    pub sockets: Vec<SocketEntry>,
    /// Netns-wide `Tcp: PassiveOpens`, if readable.
    pub passive_opens: Option<u64>,
    /// Where the sockets came from.
    pub source: Source,
}

/// Counts of the app's connections, for `/status`, metrics and the drain report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnCounts {
    /// App ports with a listening socket.
    pub listening_ports: usize,
    /// Established (or close-wait) inbound connections on app ports.
    pub established: usize,
    /// Of those, the ones with in-flight work.
    pub busy: usize,
}

impl Snapshot {
    /// Counts of the connections to `ports`.
    pub fn counts(&self, ports: &[u16]) -> ConnCounts {
        let mut listening: HashSet<u16> = HashSet::new();
        let mut c = ConnCounts::default();
        for s in &self.sockets {
            if !ports.contains(&s.local.port()) {
                continue;
            }
            match s.state {
                TcpState::Listen => {
                    listening.insert(s.local.port());
                }
                TcpState::Established | TcpState::CloseWait => {
                    c.established += 1;
                    if s.is_busy() {
                        c.busy += 1;
                    }
                }
                _ => {}
            }
        }
        c.listening_ports = listening.len();
        c
    }
}

/// Tells whether new inbound connections arrived between observations.
///
/// Three pieces of evidence, any is enough:
/// - a request on an already established connection to an app port: data received since the
///   previous observation (`tcp_info`). kube-proxy keeps routing established connections to a
///   terminating pod, so traffic on kept-alive connections must have stopped too;
/// - a socket on an app port that the previous snapshot did not have (precise per port, but a
///   connection that opened and closed between two snapshots leaves no trace when the client
///   closed first);
/// - with [`NewConnectionSignal::Netns`](crate::config::NewConnectionSignal), the namespace's
///   `PassiveOpens` counter grew by more than the sidecar's own admin server explains (every
///   completed inbound handshake counts, so nothing is missed; a connection to another listener
///   of the pod counts too, which only lengthens the quiet period).
///
/// The admin server explains `accepted + queued`: the connections it accepted (read *after* the
/// snapshot) plus the ones the kernel completed but the server has not accepted yet (the admin
/// listener's accept queue, in the snapshot). Read in that order, an admin connection is never
/// missing from the explanation, only sometimes counted a moment early, so the unexplained count
/// `U = ΔPassiveOpens − explained` never runs ahead of the real arrivals and only dips below.
/// An arrival is a `U` above every earlier one (a dip that recovers is not an arrival). Counting
/// only `accepted` let a kubelet probe or `/status` poll that was handshaken but not yet accepted
/// look like an arrival, often enough under steady polling to hold the quiet period open.
#[derive(Debug)]
pub struct ArrivalTracker {
    seen: Option<HashSet<(u64, u64, SocketAddr)>>,
    /// `PassiveOpens` and admin connections explained at the first observation.
    base: Option<(u64, u64)>,
    /// The highest unexplained count so far.
    max_unexplained: i64,
    /// Whether data on an established connection counts as an arrival.
    count_requests: bool,
}

impl Default for ArrivalTracker {
    fn default() -> Self {
        Self {
            seen: None,
            base: None,
            max_unexplained: 0,
            count_requests: true,
        }
    }
}

impl ArrivalTracker {
    /// A tracker that ignores requests on established connections: only new connections count
    /// (an app that shuts down gracefully finishes what arrives on its kept-alive connections).
    pub fn new_connections_only() -> Self {
        Self {
            count_requests: false,
            ..Self::default()
        }
    }

    /// Feeds one snapshot taken `since` after the previous one; `admin` describes the
    /// sidecar's admin server (`None` ignores `PassiveOpens`), its accept count read after the
    /// snapshot was taken. Returns whether a new connection or request arrived since the
    /// previous call; the first call only sets the baseline.
    pub fn observe(
        &mut self,
        snap: &Snapshot,
        ports: &[u16],
        admin: Option<AdminServer>,
        since: std::time::Duration,
    ) -> bool {
        let current: HashSet<_> = snap
            .sockets
            .iter()
            .filter(|s| s.is_inbound_on(ports))
            .map(SocketEntry::key)
            .collect();
        let mut arrived = match &self.seen {
            Some(prev) => {
                current.iter().any(|k| !prev.contains(k))
                    || self.count_requests
                        && snap.sockets.iter().any(|s| {
                            s.is_inbound_on(ports)
                                && s.state == TcpState::Established
                                && s.activity.is_some_and(|a| {
                                    a.bytes_received > 0
                                        && u128::from(a.last_data_recv_ms) < since.as_millis()
                                })
                        })
            }
            None => false,
        };
        self.seen = Some(current);
        if let (Some(passive), Some(admin)) = (snap.passive_opens, admin) {
            let explained = admin.accepted + snap.accept_queue(admin.port);
            match self.base {
                None => self.base = Some((passive, explained)),
                Some((p0, e0)) => {
                    let unexplained =
                        passive.saturating_sub(p0) as i64 - explained as i64 + e0 as i64;
                    if unexplained > self.max_unexplained {
                        arrived = true;
                        self.max_unexplained = unexplained;
                    }
                }
            }
        }
        arrived
    }
}

/// The sidecar's admin server, whose connections explain part of `PassiveOpens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminServer {
    /// Its listening port.
    pub port: u16,
    /// Connections it accepted so far.
    pub accepted: u64,
}

impl Snapshot {
    /// Connections the kernel completed on `port` that are waiting to be accepted.
    fn accept_queue(&self, port: u16) -> u64 {
        self.sockets
            .iter()
            .filter(|s| s.state == TcpState::Listen && s.local.port() == port)
            .map(|s| u64::from(s.rx_queue))
            .sum()
    }
}

/// Error reading the socket table.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Netlink failure.
    #[error("sock_diag: {0}")]
    Diag(String),
    /// /proc read failure.
    #[error("reading {path}: {source}")]
    Proc {
        /// File read.
        path: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Reads a snapshot: sock_diag first, then /proc. Blocking; call from a blocking task.
pub fn snapshot_blocking() -> Result<Snapshot, SocketError> {
    let passive_opens = proc::read_passive_opens();
    match diag::dump() {
        Ok(sockets) => Ok(Snapshot {
            sockets,
            passive_opens,
            source: Source::SockDiag,
        }),
        Err(e) => {
            tracing::debug!(error = %e, "sock_diag unavailable, reading /proc/net/tcp");
            let sockets = proc::read_tables()?;
            Ok(Snapshot {
                sockets,
                passive_opens,
                source: Source::Proc,
            })
        }
    }
}

/// Async wrapper of [`snapshot_blocking`].
pub async fn snapshot() -> Result<Snapshot, SocketError> {
    match tokio::task::spawn_blocking(snapshot_blocking).await {
        Ok(r) => r,
        Err(e) => Err(SocketError::Diag(format!("snapshot task failed: {e}"))),
    }
}

//! Listening sockets of the sidecar (admin server, proxy listeners) for IPv4-only, IPv6-only
//! and dual-stack pods.
//!
//! `::` (the sidecar's default bind) means every address of both families: one IPv6 socket with
//! `IPV6_V6ONLY` off, which also accepts IPv4 as mapped addresses — the kubelet reaches the
//! readiness endpoint and the preStop drain on the pod IP, whichever family it has. A node
//! without IPv6 (disabled in the kernel) cannot open that socket, and the listener falls back
//! to `0.0.0.0`. Any other address is bound as given.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Backlog of the listeners (tokio's default for `TcpListener::bind`).
const BACKLOG: i32 = 1024;

/// One way to bind: the address, and for an IPv6 socket whether it is IPv6-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Address bound.
    pub addr: SocketAddr,
    /// `Some(false)`: an IPv6 socket that accepts IPv4 too; `None`: the system's default.
    pub only_v6: Option<bool>,
}

/// The binds tried for `addr`, in order (pure): `[::]` dual-stack then `0.0.0.0` for the
/// unspecified IPv6 address, `addr` alone otherwise.
pub fn attempts(addr: SocketAddr) -> Vec<Attempt> {
    if addr.ip() == Ipv6Addr::UNSPECIFIED {
        vec![
            Attempt {
                addr,
                only_v6: Some(false),
            },
            Attempt {
                addr: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                only_v6: None,
            },
        ]
    } else {
        vec![Attempt {
            addr,
            only_v6: None,
        }]
    }
}

fn bind_one(a: Attempt) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(a.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if let Some(only_v6) = a.only_v6 {
        socket.set_only_v6(only_v6)?;
    }
    // As tokio's `TcpListener::bind`: a restarted sidecar can bind while old connections of
    // the previous process are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&a.addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds a TCP listener on `addr` as described in the module docs (`[::]`: both families,
/// falling back to `0.0.0.0` where the node has no IPv6). The error is the first attempt's.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut first_err = None;
    for a in attempts(addr) {
        match bind_one(a) {
            Ok(l) => {
                if first_err.is_some() {
                    tracing::info!(addr = %a.addr, "no IPv6 on this node: listening on IPv4 only");
                }
                return TcpListener::from_std(l);
            }
            Err(e) => {
                tracing::debug!(addr = %a.addr, error = %e, "bind failed");
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| io::Error::other("no address to bind")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_v6_is_dual_stack_then_ipv4() {
        let a = attempts("[::]:9901".parse().unwrap());
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].only_v6, Some(false));
        assert_eq!(a[1].addr, "0.0.0.0:9901".parse().unwrap());
        for explicit in ["0.0.0.0:9901", "127.0.0.1:1", "[::1]:9901", "[fd00::1]:80"] {
            let addr: SocketAddr = explicit.parse().unwrap();
            assert_eq!(
                attempts(addr),
                vec![Attempt {
                    addr,
                    only_v6: None
                }]
            );
        }
    }

    #[tokio::test]
    async fn a_dual_stack_listener_accepts_both_families() {
        let l = bind("[::]:0".parse().unwrap()).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            for _ in 0..2 {
                l.accept().await.unwrap();
            }
        });
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("IPv4 accepted");
        // Where the test host has IPv6 loopback, IPv6 too.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            tokio::net::TcpStream::connect(("::1", port))
                .await
                .expect("IPv6 accepted");
        } else {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
        }
        accept.await.unwrap();
    }

    #[tokio::test]
    async fn an_explicit_address_is_bound_as_given() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_eq!(l.local_addr().unwrap().ip().to_string(), "127.0.0.1");
    }
}

//! `sock_diag` netlink dump of TCP sockets with `tcp_info` (the same source as `ss -ti`).
//! Needs no privilege: a process sees every socket of its own network namespace.

use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use super::{Activity, SocketEntry, SocketError, TcpState};

/// Dumps every IPv4 and IPv6 TCP socket of the namespace.
pub fn dump() -> Result<Vec<SocketEntry>, SocketError> {
    let err = |e: std::io::Error| SocketError::Diag(e.to_string());
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(err)?;
    socket.bind_auto().map_err(err)?;
    socket.connect(&NlAddr::new(0, 0)).map_err(err)?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(&socket, family, &mut out)?;
    }
    Ok(out)
}

fn dump_family(socket: &Socket, family: u8, out: &mut Vec<SocketEntry>) -> Result<(), SocketError> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut packet = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket
        .send(&buf[..], 0)
        .map_err(|e| SocketError::Diag(e.to_string()))?;

    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| SocketError::Diag(e.to_string()))?;
        if parse_reply(&rx[..size], out)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of a sock_diag dump reply (pure; fuzzed in `tests/parsers_prop.rs`):
/// appends its sockets to `out`, and returns whether it ended the dump (`NLMSG_DONE`).
pub fn parse_reply(datagram: &[u8], out: &mut Vec<SocketEntry>) -> Result<bool, SocketError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&datagram[offset..])
            .map_err(|e| SocketError::Diag(format!("parse: {e}")))?;
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let info = r.nlas.iter().find_map(|n| match n {
                    Nla::TcpInfo(raw) => Some(raw.as_slice()),
                    _ => None,
                });
                let h = &r.header;
                out.push(SocketEntry {
                    local: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
                    remote: SocketAddr::new(
                        h.socket_id.destination_address,
                        h.socket_id.destination_port,
                    ),
                    state: TcpState::from(h.state),
                    tx_queue: h.send_queue,
                    rx_queue: h.recv_queue,
                    inode: u64::from(h.inode),
                    cookie: Some(u64::from_ne_bytes(h.socket_id.cookie)),
                    activity: info.and_then(parse_tcp_info),
                });
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return Err(SocketError::Diag(format!("netlink error: {e:?}")));
            }
            _ => {}
        }
        if len == 0 {
            break;
        }
        offset += len;
    }
    Ok(false)
}

/// Reads the fields the drain needs from a raw `struct tcp_info` (`include/uapi/linux/tcp.h`):
/// `tcpi_last_data_sent` at byte 44, `tcpi_last_data_recv` at 52, `tcpi_bytes_acked` at 120,
/// `tcpi_bytes_received` at 128 (kernel 4.1+). Native endianness.
pub fn parse_tcp_info(raw: &[u8]) -> Option<Activity> {
    let u32_at = |o: usize| {
        raw.get(o..o + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        raw.get(o..o + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
    };
    Some(Activity {
        last_data_sent_ms: u32_at(44)?,
        last_data_recv_ms: u32_at(52)?,
        bytes_acked: u64_at(120)?,
        bytes_received: u64_at(128)?,
    })
}

//! Parsers of `/proc/net/tcp`, `/proc/net/tcp6` and `/proc/net/snmp`.
//!
//! Addresses are hex in the kernel's byte order: each 32-bit word of the address is printed
//! as a native-endian (little-endian on x86_64/arm64) integer; ports are big-endian hex.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{SocketEntry, SocketError, TcpState};

/// Parses one table (header line first, as the kernel prints it). Malformed lines are skipped.
pub fn parse_table(text: &str) -> Vec<SocketEntry> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<SocketEntry> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = parse_addr(f.next()?)?;
    let remote = parse_addr(f.next()?)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    let (tx, rx) = f.next()?.split_once(':')?;
    let _timer = f.next()?;
    let _retr = f.next()?;
    let _uid = f.next()?;
    let _timeout = f.next()?;
    let inode = f.next()?.parse().ok()?;
    Some(SocketEntry {
        local,
        remote,
        state: TcpState::from(state),
        tx_queue: u32::from_str_radix(tx, 16).ok()?,
        rx_queue: u32::from_str_radix(rx, 16).ok()?,
        inode,
        cookie: None,
        activity: None,
    })
}

fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?.to_ne_bytes())),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                // `get`: a non-ASCII field of 32 bytes may not split on character boundaries.
                let w = word(ip.get(i * 8..i * 8 + 8)?)?;
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn word(hex: &str) -> Option<u32> {
    u32::from_str_radix(hex, 16).ok()
}

/// Reads both tables of the current network namespace.
pub fn read_tables() -> Result<Vec<SocketEntry>, SocketError> {
    let mut out = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(path) {
            Ok(t) => out.extend(parse_table(&t)),
            // No IPv6 in this namespace: nothing to read.
            Err(e) if path.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SocketError::Proc { path, source }),
        }
    }
    Ok(out)
}

/// Extracts `Tcp: PassiveOpens` from `/proc/net/snmp` text.
pub fn parse_passive_opens(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let idx = names.split_whitespace().position(|n| n == "PassiveOpens")?;
    values.split_whitespace().nth(idx)?.parse().ok()
}

/// Reads the namespace's `PassiveOpens` counter.
pub fn read_passive_opens() -> Option<u64> {
    std::fs::read_to_string("/proc/net/snmp")
        .ok()
        .as_deref()
        .and_then(parse_passive_opens)
}

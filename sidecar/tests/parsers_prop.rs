//! Property tests ("fuzzing" on stable Rust, with proptest) of every sidecar parser that reads
//! input from outside the process: `/proc/net/tcp{,6}` and `/proc/net/snmp`, sock_diag netlink
//! replies and the `tcp_info` blob in them, the gRPC health response, and the sidecar's
//! configuration (flags and environment variables).
//!
//! Each target checks two things: arbitrary (and mutated well-formed) input never panics, and
//! well-formed input generated from known values parses back to exactly those values.
//!
//! Case counts are small by default so `make unit` stays fast; `PROPTEST_CASES` overrides them
//! all (`make fuzz` runs each target for minutes; docs/security.md, "Fuzzing").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use netlink_packet_core::{DoneMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{InetResponse, InetResponseHeader, SocketId};
use proptest::prelude::*;
use quiesce_api::sidecar::env;
use quiesce_sidecar::config::{Args, ProbeKind};
use quiesce_sidecar::probe::{grpc_health_request, grpc_health_status};
use quiesce_sidecar::sockets::diag::{parse_reply, parse_tcp_info};
use quiesce_sidecar::sockets::proc::{parse_passive_opens, parse_table};
use quiesce_sidecar::sockets::{Activity, SocketEntry, TcpState};

const TCP4: &str = include_str!("../src/sockets/testdata/tcp4.txt");
const TCP4_TIMEWAIT: &str = include_str!("../src/sockets/testdata/tcp4_timewait.txt");
const TCP6: &str = include_str!("../src/sockets/testdata/tcp6.txt");
const SNMP: &str = include_str!("../src/sockets/testdata/snmp.txt");

/// `default` cases unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c
}

// ---------------------------------------------------------------- helpers: edits of good input

/// One edit of a text: replace, insert or delete a character at a relative position.
#[derive(Debug, Clone)]
enum Edit {
    Replace(f64, char),
    Insert(f64, char),
    Delete(f64),
    Truncate(f64),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Characters that matter to the parsers, plus any char (multi-byte ones included).
    let ch = prop_oneof![
        3 => prop::sample::select(vec![':', ' ', '\n', '\t', '0', 'F', 'f', 'g', '+', '-', 'é', '\u{10FFFF}']),
        1 => any::<char>(),
    ];
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), ch.clone()).prop_map(|(a, c)| Edit::Replace(a, c)),
        (at.clone(), ch).prop_map(|(a, c)| Edit::Insert(a, c)),
        at.clone().prop_map(Edit::Delete),
        at.prop_map(Edit::Truncate),
    ]
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let pos = |a: f64, len: usize| ((a * len as f64) as usize).min(len);
        match *e {
            Edit::Replace(a, c) if !chars.is_empty() => {
                let i = pos(a, chars.len() - 1);
                chars[i] = c;
            }
            Edit::Insert(a, c) => {
                let i = pos(a, chars.len());
                chars.insert(i, c);
            }
            Edit::Delete(a) if !chars.is_empty() => {
                let i = pos(a, chars.len() - 1);
                chars.remove(i);
            }
            Edit::Truncate(a) => {
                let i = pos(a, chars.len());
                chars.truncate(i);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

// ------------------------------------------------------------------------ /proc/net/tcp{,6}

/// The kernel's address format: each 32-bit word of the address as a native-endian hex integer.
fn proc_addr(addr: SocketAddr) -> String {
    let words = |b: &[u8]| -> String {
        b.chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
            .collect()
    };
    let ip = match addr.ip() {
        IpAddr::V4(v4) => words(&v4.octets()),
        IpAddr::V6(v6) => words(&v6.octets()),
    };
    format!("{ip}:{:04X}", addr.port())
}

fn proc_line(sl: usize, e: &SocketEntry, state: u8) -> String {
    format!(
        "{sl:4}: {} {} {state:02X} {:08X}:{:08X} 00:00000000 00000000  1000        0 {} 1 0000000000000000 20 4 30 10 -1",
        proc_addr(e.local),
        proc_addr(e.remote),
        e.tx_queue,
        e.rx_queue,
        e.inode,
    )
}

fn socket_addr(v6: bool) -> impl Strategy<Value = SocketAddr> {
    let ip = if v6 {
        any::<[u8; 16]>()
            .prop_map(|b| IpAddr::V6(Ipv6Addr::from(b)))
            .boxed()
    } else {
        any::<[u8; 4]>()
            .prop_map(|b| IpAddr::V4(Ipv4Addr::from(b)))
            .boxed()
    };
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A socket as `/proc/net/tcp{,6}` shows it (no cookie, no activity), with its raw state.
fn proc_entry(v6: bool) -> impl Strategy<Value = (SocketEntry, u8)> {
    (
        socket_addr(v6),
        socket_addr(v6),
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(local, remote, state, tx, rx, inode)| {
            (
                SocketEntry {
                    local,
                    remote,
                    state: TcpState::from(state),
                    tx_queue: tx,
                    rx_queue: rx,
                    inode,
                    cookie: None,
                    activity: None,
                },
                state,
            )
        })
}

fn table(v6: bool) -> impl Strategy<Value = Vec<(SocketEntry, u8)>> {
    prop::collection::vec(proc_entry(v6), 0..20)
}

fn render_table(header: &str, entries: &[(SocketEntry, u8)]) -> String {
    let mut t = format!("{header}\n");
    for (i, (e, state)) in entries.iter().enumerate() {
        t.push_str(&proc_line(i, e, *state));
        t.push('\n');
    }
    t
}

const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

proptest! {
    #![proptest_config(cases(512))]

    /// A table the kernel could print parses to exactly its sockets, IPv4 and IPv6.
    #[test]
    fn proc_tcp_table_round_trips(v4 in table(false), v6 in table(true)) {
        for entries in [v4, v6] {
            let parsed = parse_table(&render_table(HEADER, &entries));
            let expected: Vec<SocketEntry> = entries.into_iter().map(|(e, _)| e).collect();
            prop_assert_eq!(parsed, expected);
        }
    }

    /// Malformed lines are skipped, the good ones around them still parse; nothing panics.
    #[test]
    fn proc_tcp_table_skips_garbage_lines(
        entries in table(false),
        garbage in prop::collection::vec(("[0-9A-Fa-f: \\t]{0,80}", "\\PC{0,80}"), 0..8),
    ) {
        let mut text = format!("{HEADER}\n");
        let mut good = Vec::new();
        for (i, (e, state)) in entries.iter().enumerate() {
            text.push_str(&proc_line(i, e, *state));
            text.push('\n');
            good.push(e.clone());
            if let Some((hexish, any)) = garbage.get(i) {
                // A line with fewer than 10 fields can never parse.
                let short: String = hexish.split_whitespace().take(9).collect::<Vec<_>>().join(" ");
                let junk = any.split_whitespace().take(9).collect::<Vec<_>>().join(" ");
                text.push_str(&format!("{short}\n{junk}\n"));
            }
        }
        prop_assert_eq!(parse_table(&text), good);
    }

    /// Arbitrary text, and the captured tables with random edits (multi-byte characters
    /// included), never panic.
    #[test]
    fn proc_tcp_table_never_panics(
        text in "\\PC{0,400}",
        which in 0..3usize,
        edits in prop::collection::vec(edit(), 1..12),
    ) {
        let _ = parse_table(&text);
        let sample = [TCP4, TCP4_TIMEWAIT, TCP6][which];
        let _ = parse_table(&apply_edits(sample, &edits));
    }

    /// `Tcp: PassiveOpens` is found wherever its column is; arbitrary or edited text never panics.
    #[test]
    fn snmp_passive_opens(
        before in prop::collection::vec("[A-Z][A-Za-z]{1,12}", 0..8),
        after in prop::collection::vec("[A-Z][A-Za-z]{1,12}", 0..8),
        value in any::<u64>(),
        other in prop::collection::vec(any::<i64>(), 16),
        text in "\\PC{0,300}",
        edits in prop::collection::vec(edit(), 1..12),
    ) {
        let before: Vec<_> = before.into_iter().filter(|n| n != "PassiveOpens").collect();
        let after: Vec<_> = after.into_iter().filter(|n| n != "PassiveOpens").collect();
        let names: Vec<&str> = before
            .iter()
            .map(String::as_str)
            .chain(["PassiveOpens"])
            .chain(after.iter().map(String::as_str))
            .collect();
        let values: Vec<String> = (0..names.len())
            .map(|i| if i == before.len() { value.to_string() } else { other[i % 16].to_string() })
            .collect();
        let snmp = format!(
            "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: {}\nTcp: {}\nUdp: InDatagrams\nUdp: 3\n",
            names.join(" "),
            values.join(" ")
        );
        prop_assert_eq!(parse_passive_opens(&snmp), Some(value));
        let _ = parse_passive_opens(&text);
        let _ = parse_passive_opens(&apply_edits(SNMP, &edits));
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// Lines of the right shape whose fields hold hex digits mixed with multi-byte characters
    /// (an address of the right byte length that is not ASCII) never panic.
    #[test]
    fn proc_tcp_fields_never_panic(
        fields in prop::collection::vec("[0-9A-F:é€\u{10000}]{0,40}", 10..14),
        v6 in any::<bool>(),
        addr in "[0-9A-Fé€\u{10000}]{2,32}",
    ) {
        // An address field whose IP part is exactly 8 or 32 bytes long.
        let want = if v6 { 32 } else { 8 };
        let mut ip = String::new();
        for c in addr.chars().cycle() {
            if ip.len() + c.len_utf8() > want {
                break;
            }
            ip.push(c);
        }
        while ip.len() < want {
            ip.push('0');
        }
        let mut line = fields.clone();
        line[1] = format!("{ip}:0050");
        line[2] = format!("{ip}:1F90");
        let _ = parse_table(&format!("{HEADER}\n{}\n", line.join(" ")));
        let _ = parse_table(&format!("{HEADER}\n{}\n", fields.join(" ")));
    }
}

/// Regression (found by `proc_tcp_fields_never_panic`): a 32-byte IPv6 address field with a
/// multi-byte character across a word boundary was sliced mid-character — a panic.
#[test]
fn proc_tcp_non_ascii_address_is_skipped() {
    let ip = format!("0000000é{}", "0".repeat(23));
    assert_eq!(ip.len(), 32);
    let line = format!(
        "   0: {ip}:0050 {} 01 00000000:00000000 00:00000000 00000000 0 0 1 1",
        "0".repeat(32) + ":0000"
    );
    assert_eq!(parse_table(&format!("{HEADER}\n{line}\n")), Vec::new());
}

#[test]
fn snmp_sample_still_parses() {
    assert!(parse_passive_opens(SNMP).is_some());
}

// ---------------------------------------------------------------------- sock_diag replies

/// A raw `struct tcp_info` of `len` bytes with the four fields the drain reads.
fn tcp_info_bytes(a: &Activity, len: usize, filler: u8) -> Vec<u8> {
    let mut raw = vec![filler; len.max(136)];
    raw[44..48].copy_from_slice(&a.last_data_sent_ms.to_ne_bytes());
    raw[52..56].copy_from_slice(&a.last_data_recv_ms.to_ne_bytes());
    raw[120..128].copy_from_slice(&a.bytes_acked.to_ne_bytes());
    raw[128..136].copy_from_slice(&a.bytes_received.to_ne_bytes());
    raw.truncate(len);
    raw
}

fn activity() -> impl Strategy<Value = Activity> {
    (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(s, r, a, b)| Activity {
        last_data_sent_ms: s,
        last_data_recv_ms: r,
        bytes_acked: a,
        bytes_received: b,
    })
}

/// One socket as the kernel reports it, and what the sidecar should make of it.
#[derive(Debug, Clone)]
struct DiagSocket {
    entry: SocketEntry,
    state: u8,
    inode: u32,
    /// Length of the `tcp_info` attribute (`None`: no attribute); below 136 it is too short.
    info_len: Option<usize>,
    filler: u8,
}

fn diag_socket() -> impl Strategy<Value = DiagSocket> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<[u8; 8]>(),
        activity(),
        prop::option::of(prop_oneof![Just(232usize), Just(136usize), 0..300usize]),
        any::<u8>(),
    )
        .prop_flat_map(
            |(v6, state, tx, rx, inode, cookie, act, info_len, filler)| {
                (socket_addr(v6), socket_addr(v6)).prop_map(move |(local, remote)| DiagSocket {
                    entry: SocketEntry {
                        local,
                        remote,
                        state: TcpState::from(state),
                        tx_queue: tx,
                        rx_queue: rx,
                        inode: u64::from(inode),
                        cookie: Some(u64::from_ne_bytes(cookie)),
                        activity: info_len.filter(|l| *l >= 136).map(|_| act),
                    },
                    state,
                    inode,
                    info_len,
                    filler,
                })
            },
        )
}

fn serialize(mut msg: NetlinkMessage<SockDiagMessage>) -> Vec<u8> {
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

fn diag_message(s: &DiagSocket) -> Vec<u8> {
    let e = &s.entry;
    let family = if e.local.is_ipv6() { AF_INET6 } else { AF_INET };
    let nlas: Vec<Nla> = s
        .info_len
        .map(|len| {
            let act = e.activity.unwrap_or(Activity {
                last_data_sent_ms: 0,
                last_data_recv_ms: 0,
                bytes_acked: 0,
                bytes_received: 0,
            });
            vec![
                Nla::Shutdown(0),
                Nla::TcpInfo(tcp_info_bytes(&act, len, s.filler)),
                Nla::Congestion("cubic".into()),
            ]
        })
        .unwrap_or_default();
    let response = InetResponse {
        header: InetResponseHeader {
            family,
            state: s.state,
            timer: None,
            socket_id: SocketId {
                source_port: e.local.port(),
                destination_port: e.remote.port(),
                source_address: e.local.ip(),
                destination_address: e.remote.ip(),
                interface_id: 0,
                cookie: e.cookie.unwrap_or_default().to_ne_bytes(),
            },
            recv_queue: e.rx_queue,
            send_queue: e.tx_queue,
            uid: 1000,
            inode: s.inode,
        },
        nlas: nlas.into(),
    };
    serialize(NetlinkMessage::new(
        NetlinkHeader::default(),
        SockDiagMessage::InetResponse(Box::new(response)).into(),
    ))
}

fn done_message() -> Vec<u8> {
    let mut done = DoneMessage::default();
    done.code = 0;
    serialize(NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::Done(done),
    ))
}

/// A datagram of `sockets`, ended by `NLMSG_DONE` when `done`.
fn datagram(sockets: &[DiagSocket], done: bool) -> Vec<u8> {
    let mut d: Vec<u8> = sockets.iter().flat_map(diag_message).collect();
    if done {
        d.extend(done_message());
    }
    d
}

/// One edit of a byte string.
fn byte_edits() -> impl Strategy<Value = Vec<(f64, u8, u8)>> {
    // (position, kind, value): 0 = overwrite, 1 = insert, 2 = delete, 3 = truncate.
    prop::collection::vec((0.0..1.0f64, 0..4u8, any::<u8>()), 1..10)
}

fn apply_byte_edits(bytes: &[u8], edits: &[(f64, u8, u8)]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(a, kind, v) in edits {
        let i = ((a * b.len() as f64) as usize).min(b.len());
        match kind {
            0 if i < b.len() => b[i] = v,
            1 => b.insert(i, v),
            2 if i < b.len() => {
                b.remove(i);
            }
            3 => b.truncate(i),
            _ => {}
        }
    }
    b
}

proptest! {
    #![proptest_config(cases(512))]

    /// A dump datagram parses to exactly its sockets (cookie, queues, tcp_info activity when
    /// the attribute is long enough), and `NLMSG_DONE` ends the dump.
    #[test]
    fn sock_diag_reply_round_trips(sockets in prop::collection::vec(diag_socket(), 0..12), done in any::<bool>()) {
        let mut out = Vec::new();
        let ended = parse_reply(&datagram(&sockets, done), &mut out);
        prop_assert_eq!(ended.ok(), Some(done));
        let expected: Vec<SocketEntry> = sockets.iter().map(|s| s.entry.clone()).collect();
        prop_assert_eq!(out, expected);
    }

    /// Arbitrary bytes, and good datagrams with random byte edits (lengths in headers and
    /// attributes included), give sockets or an error — never a panic or an endless loop.
    #[test]
    fn sock_diag_reply_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        sockets in prop::collection::vec(diag_socket(), 1..4),
        edits in byte_edits(),
    ) {
        let mut out = Vec::new();
        let _ = parse_reply(&bytes, &mut out);
        let good = datagram(&sockets, true);
        let edited = apply_byte_edits(&good, &edits);
        let mut out = Vec::new();
        let _ = parse_reply(&edited, &mut out);
        prop_assert!(out.len() <= edited.len() / 16, "more sockets than 16-byte headers");
    }

    /// `tcp_info` of any length: the four fields when it holds them, else nothing.
    #[test]
    fn tcp_info_fields(act in activity(), len in 0..400usize, filler in any::<u8>(), raw in prop::collection::vec(any::<u8>(), 0..300)) {
        let parsed = parse_tcp_info(&tcp_info_bytes(&act, len, filler));
        prop_assert_eq!(parsed, (len >= 136).then_some(act));
        prop_assert_eq!(parse_tcp_info(&raw).is_some(), raw.len() >= 136);
    }
}

// --------------------------------------------------------------------- gRPC health response

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A protobuf field of a `HealthCheckResponse` (field 1 is `status`; others are unknown fields
/// a newer server may send, of every wire type).
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Bytes(u32, Vec<u8>),
    Fixed32(u32, u32),
}

fn field() -> impl Strategy<Value = Field> {
    // Field numbers 1..2^29: tags of one to five bytes.
    let number = prop_oneof![1..16u32, 16..2048u32, 2048..(1u32 << 29)];
    prop_oneof![
        (number.clone(), any::<u64>()).prop_map(|(n, v)| Field::Varint(n, v)),
        (1..3u32, 0..5u64).prop_map(|(n, v)| Field::Varint(n, v)),
        (number.clone(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        (number.clone(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(n, v)| Field::Bytes(n, v)),
        (number, any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
    ]
}

fn encode(fields: &[Field]) -> Vec<u8> {
    let mut m = Vec::new();
    for f in fields {
        match f {
            Field::Varint(n, v) => {
                varint(u64::from(*n) << 3, &mut m);
                varint(*v, &mut m);
            }
            Field::Fixed64(n, v) => {
                varint(u64::from(*n) << 3 | 1, &mut m);
                m.extend(v.to_le_bytes());
            }
            Field::Bytes(n, b) => {
                varint(u64::from(*n) << 3 | 2, &mut m);
                varint(b.len() as u64, &mut m);
                m.extend(b);
            }
            Field::Fixed32(n, v) => {
                varint(u64::from(*n) << 3 | 5, &mut m);
                m.extend(v.to_le_bytes());
            }
        }
    }
    let mut frame = vec![0];
    frame.extend((m.len() as u32).to_be_bytes());
    frame.extend(m);
    frame
}

proptest! {
    #![proptest_config(cases(1024))]

    /// The status is the last `status` field (protobuf: last one wins), 0 (UNKNOWN) when
    /// absent, whatever unknown fields surround it; bytes after the frame are ignored.
    #[test]
    fn grpc_health_response_round_trips(
        fields in prop::collection::vec(field(), 0..8),
        trailing in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let expected = fields
            .iter()
            .rev()
            .find_map(|f| match f {
                Field::Varint(1, v) => Some(*v),
                _ => None,
            })
            .unwrap_or(0);
        let mut frame = encode(&fields);
        frame.extend(trailing);
        prop_assert_eq!(grpc_health_status(&frame), Some(expected));
    }

    /// Arbitrary and edited frames never panic; a frame cut short is malformed.
    #[test]
    fn grpc_health_response_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        fields in prop::collection::vec(field(), 1..6),
        edits in byte_edits(),
        cut in 0.0..1.0f64,
    ) {
        let _ = grpc_health_status(&bytes);
        let good = encode(&fields);
        let _ = grpc_health_status(&apply_byte_edits(&good, &edits));
        let cut = ((cut * good.len() as f64) as usize).min(good.len() - 1);
        prop_assert_eq!(grpc_health_status(&good[..cut]), None);
    }

    /// The request frame is one uncompressed message whose length prefix is right, holding
    /// the service name as field 1.
    #[test]
    fn grpc_health_request_frames(service in "\\PC{0,300}") {
        let f = grpc_health_request(&service);
        prop_assert_eq!(f[0], 0);
        let len = u32::from_be_bytes(f[1..5].try_into().unwrap()) as usize;
        prop_assert_eq!(len, f.len() - 5);
        let expected = if service.is_empty() {
            Vec::new()
        } else {
            let mut m = Vec::new();
            varint(1 << 3 | 2, &mut m);
            varint(service.len() as u64, &mut m);
            m.extend(service.as_bytes());
            m
        };
        prop_assert_eq!(&f[5..], &expected[..]);
    }
}

/// Regressions (found by `grpc_health_response_round_trips`): unknown fields of the 64- and
/// 32-bit wire types made the response malformed, and a field number above 15 (a tag of two
/// bytes or more) was misread.
#[test]
fn grpc_health_response_skips_every_kind_of_unknown_field() {
    assert_eq!(
        grpc_health_status(&encode(&[Field::Fixed64(1, 0)])),
        Some(0)
    );
    let serving = Field::Varint(1, 1);
    for unknown in [
        Field::Fixed64(2, u64::MAX),
        Field::Fixed32(3, 7),
        Field::Varint(16, 300),
        Field::Bytes(2047, vec![0x08, 0x02]),
        Field::Varint(1 << 28, 2),
    ] {
        let frame = encode(&[serving.clone(), unknown.clone()]);
        assert_eq!(grpc_health_status(&frame), Some(1), "{unknown:?}");
        let frame = encode(&[unknown.clone(), serving.clone()]);
        assert_eq!(grpc_health_status(&frame), Some(1), "{unknown:?}");
    }
}

// ------------------------------------------------------------------ sidecar configuration

/// Every variable a sidecar flag is bound to.
const VARS: &[&str] = &[
    env::QUIESCE_MODE,
    env::QUIESCE_APP_PORTS,
    env::QUIESCE_ADMIN_BIND,
    env::QUIESCE_ADMIN_PORT,
    env::QUIESCE_PROBE,
    env::QUIESCE_PROBE_PORT,
    env::QUIESCE_PROBE_HOST,
    env::QUIESCE_PROBE_PATH,
    env::QUIESCE_PROBE_STATUS,
    env::QUIESCE_PROBE_GRPC_SERVICE,
    env::QUIESCE_PROBE_PERIOD,
    env::QUIESCE_PROBE_TIMEOUT,
    env::QUIESCE_PROBE_SUCCESS_THRESHOLD,
    env::QUIESCE_PROBE_FAILURE_THRESHOLD,
    env::QUIESCE_DRAIN_MODE,
    env::QUIESCE_APP_SHUTDOWN,
    env::QUIESCE_ENDPOINT_TIMEOUT,
    env::QUIESCE_QUIET_PERIOD,
    env::QUIESCE_DRAIN_TIMEOUT,
    env::QUIESCE_NEW_CONNECTION_SIGNAL,
    env::QUIESCE_POLL_INTERVAL,
    env::QUIESCE_EXIT_TIMEOUT,
    env::QUIESCE_REPORT_TIMEOUT,
    env::QUIESCE_PROXY_PORTS,
    env::QUIESCE_PROXY_BIND,
    env::QUIESCE_PROXY_IDLE_CLOSE,
    env::QUIESCE_LOG_FORMAT,
    env::POD_NAME,
    env::POD_NAMESPACE,
    env::POD_IP,
];

/// A value for a variable: mostly plausible for its kind, sometimes anything.
fn value() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("65535".to_string()),
        Just("65536".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("99999999999999999999".to_string()),
        any::<u16>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    let duration = (
        number.clone(),
        prop::sample::select(vec!["", "ms", "s", "m", "h", "d", "µs", " s"]),
    )
        .prop_map(|(n, u)| format!("{n}{u}"));
    let ports = prop::collection::vec(prop_oneof![number.clone(), Just(" 8080 ".into())], 0..5)
        .prop_map(|v| v.join(","));
    let routes = prop::collection::vec((number.clone(), number.clone()), 0..4).prop_map(|v| {
        v.iter()
            .map(|(l, u)| format!("{l}:{u}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let status = (number.clone(), number).prop_map(|(a, b)| format!("{a}-{b}"));
    let word = prop::sample::select(vec![
        "kubernetes",
        "standalone",
        "http",
        "tcp",
        "grpc",
        "none",
        "observe",
        "Proxy",
        "proxy",
        "immediate",
        "graceful",
        "netns",
        "ports",
        "json",
        "plain",
        "",
        " ",
        "/",
        "/healthz",
        "healthz",
        "200",
        "200-399",
        "599-100",
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "10.1.2.3",
        "web-1",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        4 => word,
        3 => duration,
        2 => ports,
        2 => routes,
        1 => status,
        1 => "\\PC{0,20}",
        1 => ".{0,20}",
    ]
}

/// `(variable, value)` pairs as the process environment could hold them (each variable at most
/// once): mostly a few variables over a valid standalone base, so that many cases validate.
fn environment() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    (
        prop::collection::btree_map(prop::sample::select(VARS), value(), 0..8),
        prop::sample::select(vec!["standalone", "standalone", "standalone", "kubernetes"]),
    )
        .prop_map(|(vars, mode)| {
            let mut pairs: Vec<(&'static str, String)> = vars.into_iter().collect();
            if !pairs.iter().any(|(v, _)| *v == env::QUIESCE_MODE) {
                pairs.push((env::QUIESCE_MODE, mode.to_string()));
            }
            pairs
        })
}

/// The pairs as the flags clap binds to the variables (what it does with the environment).
fn argv(pairs: &[(&str, String)]) -> Vec<String> {
    let cmd = Args::command();
    let mut argv = vec!["quiesce-sidecar".to_owned()];
    for (var, value) in pairs {
        let long = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == *var))
            .and_then(|a| a.get_long())
            .unwrap_or_else(|| panic!("no flag is bound to {var}"));
        argv.push(format!("--{long}={value}"));
    }
    argv
}

proptest! {
    #![proptest_config(cases(512))]

    /// Any environment gives a clap error or a validation result, never a panic; a valid
    /// configuration keeps the promises the rest of the sidecar relies on, and an invalid one
    /// says what is wrong.
    #[test]
    fn sidecar_config_is_valid_or_a_clear_error(pairs in environment()) {
        let args = match Args::try_parse_from(argv(&pairs)) {
            Ok(args) => args,
            Err(e) => {
                prop_assert!(!e.to_string().trim().is_empty());
                return Ok(());
            }
        };
        match args.validate() {
            Err(e) => {
                prop_assert!(!e.0.is_empty());
                prop_assert!(e.0.iter().all(|m| !m.trim().is_empty()), "{e}");
            }
            Ok(c) => {
                prop_assert!(!c.app_ports.is_empty());
                prop_assert!(!c.app_ports.contains(&0));
                prop_assert!(c.app_ports.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
                prop_assert!(c.admin_port == 0 || !c.app_ports.contains(&c.admin_port));
                prop_assert!(c.probe.port != 0);
                if c.probe.kind == ProbeKind::Http {
                    prop_assert!(c.probe.path.starts_with('/'));
                }
                prop_assert!((100..=599).contains(&c.probe.status.0));
                prop_assert!(c.probe.status.0 <= c.probe.status.1 && c.probe.status.1 <= 599);
                prop_assert!(!c.probe.period.is_zero() && !c.probe.timeout.is_zero());
                prop_assert!(c.probe.timeout <= c.probe.period);
                prop_assert!(c.probe.success_threshold >= 1 && c.probe.failure_threshold >= 1);
                let d = &c.drain;
                prop_assert!(!d.poll_interval.is_zero() && !d.drain_timeout.is_zero());
                prop_assert!(d.quiet_period < d.drain_timeout);
                // The sidecar adds its durations up (the drain's hard bound) and to the clock
                // (deadlines): a valid configuration must not overflow either.
                let bound = d
                    .endpoint_timeout
                    .checked_add(d.drain_timeout)
                    .and_then(|b| b.checked_add(d.report_timeout))
                    .and_then(|b| b.checked_add(d.poll_interval.checked_mul(4)?))
                    .and_then(|b| b.checked_add(Duration::from_secs(2)));
                prop_assert!(bound.is_some(), "durations overflow when added: {d:?}");
                let now = Instant::now();
                for t in [bound.unwrap(), d.exit_timeout, c.probe.period, d.quiet_period] {
                    prop_assert!(now.checked_add(t).is_some(), "{t:?} overflows a deadline");
                }
                if let Some(p) = &c.proxy {
                    prop_assert!(!p.routes.is_empty());
                    prop_assert!(!p.idle_close.is_zero());
                    for &(listen, upstream) in &p.routes {
                        prop_assert!(c.app_ports.contains(&upstream));
                        prop_assert!(listen == 0 || !c.app_ports.contains(&listen));
                    }
                }
            }
        }
    }
}

/// The generator is worth something only if a fair share of its environments validate.
#[test]
fn sidecar_config_cases_often_validate() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = environment();
    let valid = (0..400)
        .filter(|_| {
            let pairs = strategy.new_tree(&mut runner).unwrap().current();
            Args::try_parse_from(argv(&pairs))
                .ok()
                .is_some_and(|a| a.validate().is_ok())
        })
        .count();
    assert!(
        valid >= 40,
        "only {valid} of 400 generated environments validate"
    );
}

/// Regression (found by `sidecar_config_is_valid_or_a_clear_error`): `u64::MAX` seconds was a
/// valid exit timeout (or drain timeout, ...), and the sidecar's deadline `now + exit_timeout`
/// (or its drain's hard bound, a sum of durations) overflowed — a panic at SIGTERM.
#[test]
fn sidecar_config_refuses_durations_that_overflow() {
    for var in [env::QUIESCE_EXIT_TIMEOUT, env::QUIESCE_DRAIN_TIMEOUT] {
        let pairs = [
            (var, "18446744073709551615s".to_string()),
            (env::QUIESCE_MODE, "standalone".to_string()),
        ];
        let err = Args::try_parse_from(argv(&pairs)).unwrap_err().to_string();
        assert!(err.contains("longer than a day"), "{err}");
    }
}

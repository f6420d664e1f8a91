//! Property tests of the drain report parser: the message of the pod condition
//! `quiesce.dev/drained`, which the app container can write too (it shares the pod's token), so
//! every message is untrusted input for the operator.
//!
//! `PROPTEST_CASES` overrides the default case counts (`make fuzz`, docs/security.md, "Fuzzing").

use proptest::prelude::*;
use quiesce_api::{DrainReport, ProxyDrainReport};

fn cases(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..10_000u64,
        Just(u64::MAX),
        Just(1 << 53),
        Just((1 << 53) + 1),
        any::<u64>()
    ]
}

fn proxy_report() -> impl Strategy<Value = ProxyDrainReport> {
    (number(), number(), number(), number(), number()).prop_map(|(r, c, g, i, l)| {
        ProxyDrainReport {
            requests_while_draining: r,
            connection_close: c,
            goaways: g,
            idle_closed: i,
            left_open: l,
        }
    })
}

fn report() -> impl Strategy<Value = DrainReport> {
    (
        (number(), number(), number(), number()),
        (number(), number(), number(), any::<bool>()),
        prop::collection::vec(
            prop_oneof![
                Just("endpoints".to_string()),
                Just("quiet".to_string()),
                Just("in_flight".to_string()),
                "\\PC{0,12}",
            ],
            0..4,
        ),
        (
            prop::option::of(number()),
            prop::option::of(proxy_report()),
            prop::option::of(number()),
        ),
    )
        .prop_map(
            |((d, e, q, i), (c, b, be, forced), phases, (handed, proxy, app))| DrainReport {
                duration_ms: d,
                endpoints_ms: e,
                quiet_ms: q,
                in_flight_ms: i,
                connections_at_start: c,
                busy_at_start: b,
                busy_at_end: be,
                forced,
                forced_phases: phases,
                handed_to_app: handed,
                proxy,
                app_shutdown_ms: app,
            },
        )
}

/// Edits of a JSON text: characters that matter to JSON, at random places.
fn json_edits() -> impl Strategy<Value = Vec<(f64, u8, char)>> {
    let ch = prop_oneof![
        3 => prop::sample::select(vec![
            '{', '}', '[', ']', '"', ':', ',', '-', '.', 'e', '0', '9', ' ', '\\', 'n', 'u', 't',
        ]),
        1 => any::<char>(),
    ];
    prop::collection::vec((0.0..1.0f64, 0..3u8, ch), 1..8)
}

fn apply(text: &str, edits: &[(f64, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(a, kind, c) in edits {
        let i = ((a * chars.len() as f64) as usize).min(chars.len());
        match kind {
            0 if i < chars.len() => chars[i] = c,
            1 => chars.insert(i, c),
            2 if i < chars.len() => {
                chars.remove(i);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(cases(1024))]

    /// What the sidecar writes, the operator reads back exactly, on one line.
    #[test]
    fn condition_message_round_trips(r in report()) {
        let message = r.to_condition_message();
        prop_assert!(!message.contains('\n'));
        prop_assert_eq!(DrainReport::from_condition_message(&message), Some(r.clone()));
        let _ = r.summary();
    }

    /// Any text — arbitrary, JSON-like, or a real message with edits — is a report or `None`,
    /// never a panic; whatever parses serializes and parses back to itself, and has a summary.
    #[test]
    fn any_message_is_a_report_or_none(
        r in report(),
        edits in json_edits(),
        text in "\\PC{0,200}",
        jsonish in "[{}\\[\\]\":,0-9a-zA-Z \\-.e]{0,200}",
    ) {
        let edited = apply(&r.to_condition_message(), &edits);
        for message in [edited.as_str(), text.as_str(), jsonish.as_str()] {
            if let Some(parsed) = DrainReport::from_condition_message(message) {
                let again = DrainReport::from_condition_message(&parsed.to_condition_message());
                prop_assert_eq!(again.as_ref(), Some(&parsed));
                let _ = parsed.summary();
            }
        }
    }
}

/// Deeply nested JSON must not overflow the stack (serde_json bounds recursion).
#[test]
fn deeply_nested_message_is_not_a_report() {
    for open in ["[", "{\"a\":"] {
        let message = open.repeat(100_000);
        assert_eq!(DrainReport::from_condition_message(&message), None);
    }
}

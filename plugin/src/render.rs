//! Text for people: tables and the rollout tree, coloured only when a terminal is attached.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use crate::view::{PodRow, RolloutView};

/// Whether to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colours on.
    pub colour: bool,
}

impl Style {
    fn paint(self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn good(self, s: &str) -> String {
        self.paint("32", s)
    }
    fn warn(self, s: &str) -> String {
        self.paint("33", s)
    }
    fn bad(self, s: &str) -> String {
        self.paint("31", s)
    }
    fn dim(self, s: &str) -> String {
        self.paint("2", s)
    }
    fn phase(self, phase: &str) -> String {
        match phase {
            "Completed" | "Idle" => self.good(phase),
            "Progressing" => self.paint("36", phase),
            "Paused" => self.warn(phase),
            _ => self.bad(phase),
        }
    }
}

/// Left-aligned columns; the width of each is its widest cell (colour codes not counted).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let visible = |s: &str| {
        let mut n = 0;
        let mut in_escape = false;
        for c in s.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, _) => n += 1,
            }
        }
        n
    };
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(visible(c));
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - visible(c) + 3));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

/// `5s`, `3m12s`, `2h4m`, `3d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let s = (now.as_second() - since.as_second()).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86400),
    }
}

fn pod_cells(p: &PodRow, style: Style) -> Vec<String> {
    let ready = if p.ready {
        style.good("Ready")
    } else if p.terminating {
        style.dim("Terminating")
    } else {
        style.warn("NotReady")
    };
    let gate = if p.gate.starts_with("held") {
        style.warn(&p.gate)
    } else {
        p.gate.clone()
    };
    let drain = match &p.drain {
        None if p.injected => "-".to_string(),
        None => style.warn("not injected"),
        Some(d) => match d.seconds {
            Some(s) if d.forced => style.bad(&format!("forced {s:.2}s")),
            Some(s) => style.good(&format!("drained {s:.2}s")),
            None if d.forced => style.bad("timed out"),
            None => style.warn(&d.phase),
        },
    };
    vec![
        p.name.clone(),
        format!("{} ({})", p.revision, p.role),
        ready,
        gate,
        drain,
        p.restarts.to_string(),
    ]
}

/// The rollout as `kubectl quiesce get` prints it.
pub fn rollout(v: &RolloutView, now: Timestamp, style: Style) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Policy:    {}/{}", v.namespace, v.name);
    let _ = writeln!(out, "Target:    deployment/{}", v.target);
    let paused = if v.paused_by_spec {
        " (spec.paused)"
    } else {
        ""
    };
    let _ = writeln!(out, "Phase:     {}{paused}", style.phase(&v.phase));
    let action = v
        .step_action
        .as_ref()
        .map_or(String::new(), |a| format!(" ({a})"));
    let _ = writeln!(out, "Step:      {}{action}", v.step);
    let rev = |r: &Option<String>| r.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "Revisions: {} (stable) → {} (update)",
        rev(&v.stable_revision),
        rev(&v.update_revision)
    );
    let _ = writeln!(
        out,
        "Replicas:  {} desired, {} updated, {} admitted, {} ready",
        v.desired, v.updated, v.admitted, v.ready
    );
    let longest = v
        .longest_drain_seconds
        .map_or(String::new(), |s| format!(", longest {s:.2}s"));
    let forced = if v.drains_forced > 0 {
        style.bad(&format!("{} forced", v.drains_forced))
    } else {
        "0 forced".to_string()
    };
    let _ = writeln!(
        out,
        "Drains:    {} completed, {forced}{longest}",
        v.drains_completed
    );
    if let Some(m) = &v.message {
        let _ = writeln!(out, "Message:   {m}");
    }
    for p in &v.problems {
        let _ = writeln!(out, "{}   {p}", style.warn("!"));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = v.pods.iter().map(|p| pod_cells(p, style)).collect();
    out.push_str(&table(
        &["POD", "REVISION", "STATUS", "GATE", "DRAIN", "RESTARTS"],
        &rows,
    ));
    if !v.events.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = v
            .events
            .iter()
            .map(|e| {
                let kind = if e.kind == "Warning" {
                    style.warn(&e.kind)
                } else {
                    e.kind.clone()
                };
                let count = if e.count > 1 {
                    format!(" (x{})", e.count)
                } else {
                    String::new()
                };
                vec![
                    e.time.map_or("-".into(), |t| age(t, now)),
                    kind,
                    e.reason.clone(),
                    format!("{}{count}", e.message),
                ]
            })
            .collect();
        out.push_str(&table(&["AGE", "TYPE", "REASON", "EVENT"], &rows));
    }
    out
}

/// The drains of some pods as `kubectl quiesce drains` prints them: one line per pod, then
/// where the time went.
pub fn drains(pods: &[PodRow], style: Style) -> String {
    let mut out = String::new();
    let with: Vec<&PodRow> = pods.iter().filter(|p| p.drain.is_some()).collect();
    if with.is_empty() {
        return "no drain reported yet (a pod's drain starts when it is deleted)\n".into();
    }
    for p in with {
        let cells = pod_cells(p, style);
        let _ = writeln!(out, "{}  {}  {}", p.name, cells[1], cells[4]);
        if let Some(s) = p.drain.as_ref().and_then(|d| d.summary.as_ref()) {
            let _ = writeln!(out, "    {s}");
        }
    }
    out
}

/// The dry run of injection as `kubectl quiesce check` prints it.
pub fn check(r: &crate::check::CheckReport, style: Style) -> String {
    let mut out = String::new();
    let governed = r.policy.as_ref().map_or(String::new(), |p| {
        format!(", governed by RolloutPolicy {p}")
    });
    let _ = writeln!(out, "deployment/{}{governed}", r.deployment);
    let section = |title: &str, items: &[String], out: &mut String| {
        if !items.is_empty() {
            let _ = writeln!(out, "{title}");
            for i in items {
                let _ = writeln!(out, "  - {i}");
            }
        }
    };
    section("Injection into each new pod:", &r.changes, &mut out);
    section("Notes:", &r.notes, &mut out);
    if r.problems.is_empty() {
        let _ = writeln!(out, "{}", style.good("No problems found."));
    } else {
        let title = style.bad(&format!("Problems ({}):", r.problems.len()));
        section(&title, &r.problems, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_visible_width_not_on_colour_codes() {
        let style = Style { colour: true };
        let t = table(
            &["A", "B"],
            &[
                vec![style.good("ok"), "x".into()],
                vec!["long-one".into(), "y".into()],
            ],
        );
        let plain: String = t.replace("\x1b[32m", "").replace("\x1b[0m", "");
        assert_eq!(plain, "A          B\nok         x\nlong-one   y\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        assert_eq!(age(t(0), t(5)), "5s");
        assert_eq!(age(t(0), t(192)), "3m12s");
        assert_eq!(age(t(0), t(7440)), "2h4m");
        assert_eq!(age(t(0), t(3 * 86400 + 5)), "3d");
        assert_eq!(age(t(10), t(0)), "0s");
    }
}

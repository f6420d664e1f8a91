//! Failure injection from outside the cluster's API: SIGKILL a container's process the way an
//! OOM kill or a crash ends it (no preStop, no SIGTERM, no graceful pod deletion).
//!
//! Container processes of the local provider (and of kind's node containers) are processes of
//! this host: a pod's are found through the pod UID in their cgroup path.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// PIDs of the processes whose command name is `comm` (as `/proc/PID/comm` shows it, at most
/// 15 bytes) in the pod with UID `pod_uid`.
pub fn pids_in_pod(pod_uid: &str, comm: &str) -> Result<Vec<u32>> {
    // cgroupfs driver: `.../pod<uid>/<container>`; systemd driver: `...-pod<uid with _>.slice/...`.
    let marks = [
        format!("pod{pod_uid}"),
        format!("pod{}", pod_uid.replace('-', "_")),
    ];
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if read(&dir.join("comm")).trim_end() != comm {
            continue;
        }
        let cgroup = read(&dir.join("cgroup"));
        if marks.iter().any(|m| cgroup.contains(m.as_str())) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// SIGKILLs the one process named `comm` in the pod with UID `pod_uid`.
pub fn kill_in_pod(pod_uid: &str, comm: &str) -> Result<u32> {
    let pids = pids_in_pod(pod_uid, comm)?;
    let [pid] = pids[..] else {
        bail!("expected one process {comm:?} in pod {pod_uid}, found {pids:?}");
    };
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(st.success(), "kill -KILL {pid}: {st}");
    Ok(pid)
}

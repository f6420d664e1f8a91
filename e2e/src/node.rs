//! What a container costs on the node, read from `/proc` (the bench runs as root on the node,
//! in its network namespace only, so the node's processes are visible).

use std::path::Path;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// The PID of the process named `comm` whose cgroup path contains `container_id` (the part after
/// `containerd://`).
pub fn find_pid(container_id: &str, comm: &str) -> Option<u32> {
    let id = container_id.rsplit("://").next()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let dir = entry.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        if cgroup.contains(id) {
            return Some(pid);
        }
    }
    None
}

/// One reading of a process: resident memory and CPU time so far.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When read.
    pub at: Instant,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `RssAnon`, KiB: the process's own memory (heap, stacks). The rest of `VmRSS` is mostly
    /// pages of its binary, which every process of the same image on the node shares.
    pub anon_kib: u64,
    /// user + system CPU time.
    pub cpu: Duration,
    /// The working set of the process's cgroup (the container) as the kubelet and cAdvisor
    /// count it (`container_memory_working_set_bytes`): usage minus inactive page cache. Pages
    /// of the image's files another container loaded first are charged to that one, so for
    /// the second and later pods of an image this is what each pays. `None` when unreadable.
    pub working_set_kib: Option<u64>,
}

/// CPU time of the process's cgroup (the container), nanosecond precision: cgroup v1
/// `cpuacct.usage`, or cgroup v2 `cpu.stat` `usage_usec`.
fn cgroup_cpu(pid: u32) -> Option<Duration> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    if let Some(path) = v1_path(&cgroups, "cpuacct") {
        for dir in ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"] {
            let file = format!("/sys/fs/cgroup/{dir}{path}/cpuacct.usage");
            if let Ok(ns) = std::fs::read_to_string(file) {
                return Some(Duration::from_nanos(ns.trim().parse().ok()?));
            }
        }
    }
    let v2 = v2_path(&cgroups)?;
    let stat = std::fs::read_to_string(format!("/sys/fs/cgroup{v2}/cpu.stat")).ok()?;
    let usec = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_micros(usec))
}

/// The cgroup path of the v1 hierarchy holding `controller`, from `/proc/<pid>/cgroup`.
fn v1_path<'a>(cgroups: &'a str, controller: &str) -> Option<&'a str> {
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })
}

/// The cgroup path in the unified (v2) hierarchy, from `/proc/<pid>/cgroup`.
fn v2_path(cgroups: &str) -> Option<&str> {
    cgroups.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The cgroup directory of `controller` below `/sys/fs/cgroup` (v1), or the unified one (v2).
fn cgroup_dir(cgroups: &str, controller: &str) -> Option<String> {
    match v1_path(cgroups, controller) {
        Some(path) => Some(format!("/sys/fs/cgroup/{controller}{path}")),
        None => Some(format!("/sys/fs/cgroup{}", v2_path(cgroups)?)),
    }
}

/// A field of a cgroup `memory.stat` (bytes).
fn stat_field(stat: &str, field: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// Usage minus inactive file pages, as cAdvisor computes the working set: v1
/// `memory.usage_in_bytes` and `total_inactive_file`, v2 `memory.current` and `inactive_file`.
pub fn working_set_bytes(usage: u64, stat: &str) -> Option<u64> {
    let inactive =
        stat_field(stat, "total_inactive_file").or_else(|| stat_field(stat, "inactive_file"))?;
    Some(usage.saturating_sub(inactive))
}

fn cgroup_working_set(pid: u32) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let dir = cgroup_dir(&cgroups, "memory")?;
    let usage = std::fs::read_to_string(format!("{dir}/memory.usage_in_bytes"))
        .or_else(|_| std::fs::read_to_string(format!("{dir}/memory.current")))
        .ok()?;
    let stat = std::fs::read_to_string(format!("{dir}/memory.stat")).ok()?;
    Some(working_set_bytes(usage.trim().parse().ok()?, &stat)? / 1024)
}

/// Reads `VmRSS` and `RssAnon` from `/proc/<pid>/status` and the CPU time of the process's cgroup (or, when
/// that is not readable, of the process from `/proc/<pid>/stat`, 10 ms resolution).
pub fn sample(pid: u32) -> Option<Sample> {
    let dir = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rss_kib = kib("VmRSS:")?;
    let anon_kib = kib("RssAnon:")?;
    let cpu = match cgroup_cpu(pid) {
        Some(cpu) => cpu,
        None => cpu_time(&std::fs::read_to_string(dir.join("stat")).ok()?)?,
    };
    Some(Sample {
        at: Instant::now(),
        rss_kib,
        anon_kib,
        cpu,
        working_set_kib: cgroup_working_set(pid),
    })
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15; the command may hold spaces).
fn cpu_time(stat: &str) -> Option<Duration> {
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / USER_HZ))
}

/// CPU used between two samples, in millicores.
pub fn millicores(a: &Sample, b: &Sample) -> f64 {
    let wall = b.at.saturating_duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    b.cpu.saturating_sub(a.cpu).as_secs_f64() / wall * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_times_are_read_past_the_command() {
        let stat = "42 (quiesce (side) R 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 4 0 1 0";
        assert_eq!(cpu_time(stat), Some(Duration::from_secs(2)));
    }

    #[test]
    fn working_set_is_usage_without_inactive_files() {
        let v1 = "cache 100\nrss 50\ntotal_inactive_file 4096\ntotal_rss 50\n";
        assert_eq!(working_set_bytes(10240, v1), Some(6144));
        let v2 = "anon 50\nfile 100\ninactive_file 2048\nactive_file 0\n";
        assert_eq!(working_set_bytes(10240, v2), Some(8192));
        assert_eq!(
            working_set_bytes(1000, "total_inactive_file 4096\n"),
            Some(0)
        );
        assert_eq!(working_set_bytes(1000, "rss 5\n"), None);
    }

    #[test]
    fn cgroup_directories_of_v1_and_v2() {
        let v1 = "12:memory:/kubepods/pod1/abc\n11:cpu,cpuacct:/kubepods/pod1/abc\n0::/\n";
        assert_eq!(
            cgroup_dir(v1, "memory").as_deref(),
            Some("/sys/fs/cgroup/memory/kubepods/pod1/abc")
        );
        assert_eq!(
            cgroup_dir("0::/kubepods.slice/x\n", "memory").as_deref(),
            Some("/sys/fs/cgroup/kubepods.slice/x")
        );
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.anon_kib > 0 && s.anon_kib <= s.rss_kib, "{s:?}");
    }
}

//! What a process has used so far, read from `/proc` (Linux): CPU time (user + system, every
//! thread), resident memory (whole and proportional), context switches, descriptors and
//! threads.

use std::time::Duration;

use anyhow::Context as _;

/// The unit of `utime` and `stime` in `/proc/<pid>/stat`: USER_HZ, 100 on every Linux ABI.
const TICKS_PER_SECOND: u64 = 100;

/// A process whose usage is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// This process.
    Own,
    /// A child, by pid.
    Child(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::Own => "/proc/self".to_owned(),
            Pid::Child(pid) => format!("/proc/{pid}"),
        }
    }
}

/// User + system CPU time of every thread of `pid` so far.
pub fn cpu(pid: Pid) -> anyhow::Result<Duration> {
    let path = format!("{}/stat", pid.dir());
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name (which may hold spaces); utime and stime
    // are fields 14 and 15 of the whole line.
    let rest = stat
        .rsplit_once(')')
        .with_context(|| format!("malformed {path}"))?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path} has no field {}", i + 3))?
            .parse::<u64>()
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// Resident memory of `pid` (`VmRSS`), in bytes.
pub fn rss(pid: Pid) -> anyhow::Result<u64> {
    kib_line(&format!("{}/status", pid.dir()), "VmRSS:")
}

/// Proportional resident memory of `pid` (`Pss` of `smaps_rollup`), in bytes: each page
/// shared with other processes counted as its share. Several processes of one binary share
/// its text, which their RSS figures each count whole; their PSS figures add up to what they
/// hold together.
pub fn pss(pid: Pid) -> anyhow::Result<u64> {
    kib_line(&format!("{}/smaps_rollup", pid.dir()), "Pss:")
}

/// The `<label> <n> kB` line of a `/proc` file, in bytes.
fn kib_line(path: &str, label: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let kib = text
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .with_context(|| format!("{path} has no {label} line"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .with_context(|| format!("the {label} line of {path}"))?;
    Ok(kib * 1024)
}

/// `bytes` in MiB, for printing.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn fds(pid: Pid) -> anyhow::Result<u64> {
    let path = format!("{}/fd", pid.dir());
    let entries = std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?;
    Ok(entries.count() as u64)
}

/// Threads of `pid` (the `Threads` line of `/proc/<pid>/status`).
pub fn threads(pid: Pid) -> anyhow::Result<u64> {
    let path = format!("{}/status", pid.dir());
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .with_context(|| format!("{path} has no Threads line"))?
        .trim()
        .parse()
        .with_context(|| format!("the Threads line of {path}"))
}

/// Context switches, voluntary and involuntary, of every live thread of `pid` so far (the
/// `*_ctxt_switches` lines of each `/proc/<pid>/task/<tid>/status`: the process's own file
/// counts its main thread only).
pub fn context_switches(pid: Pid) -> anyhow::Result<u64> {
    let dir = format!("{}/task", pid.dir());
    let mut total = 0;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("status");
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in status.lines() {
            let count = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
            if let Some(count) = count {
                total += count
                    .trim()
                    .parse::<u64>()
                    .with_context(|| format!("{line:?} in {}", path.display()))?;
            }
        }
    }
    Ok(total)
}

//! `perf` (Debian's `linux-perf`), where it is installed and allowed: the system calls and
//! context switches of each process over exactly the throughput run (`perf stat`), and a
//! profile of a row's processes drawn as a flamegraph (`perf record`, folded and drawn with
//! inferno).
//!
//! Each `perf` starts attached with its events off and is switched on and off through its
//! control FIFOs (`--delay -1 --control fifo:…`), waiting for perf's acknowledgement: the
//! counts cover the run and nothing else, with no guess at how long perf takes to attach.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

use crate::usage::Pid;

/// The events `perf stat` counts, in this order.
const EVENTS: &str = "raw_syscalls:sys_enter,context-switches";

/// How long perf may take to acknowledge a command before the bench gives up on it.
const ACK_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether `perf stat` can count this machine's system calls (installed, and allowed by
/// `perf_event_paranoid` or root); asked once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("perf")
            .args(["stat", "-e", EVENTS, "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

fn os_pid(pid: Pid) -> u32 {
    match pid {
        Pid::Own => std::process::id(),
        Pid::Child(pid) => pid,
    }
}

/// A `perf` child started with its events off, switched through its control FIFOs.
struct Controlled {
    child: Child,
    ctl: File,
    acks: mpsc::Receiver<std::io::Result<String>>,
    what: String,
    _fifos: tempfile::TempDir,
}

impl Controlled {
    /// Starts `perf <args…> --delay -1 --control fifo:…`.
    fn spawn(args: &[String], what: String) -> anyhow::Result<Controlled> {
        let fifos = tempfile::tempdir()?;
        let (ctl_path, ack_path) = (fifos.path().join("ctl"), fifos.path().join("ack"));
        for path in [&ctl_path, &ack_path] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .with_context(|| format!("mkfifo {}", path.display()))?;
        }
        let child = Command::new("perf")
            .args(args)
            .args(["--delay", "-1", "--control"])
            .arg(format!(
                "fifo:{},{}",
                ctl_path.display(),
                ack_path.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting perf")?;
        // Both ends opened read-write: opening a FIFO so never waits for the other side, so
        // a perf that failed to start cannot hang the bench here (the ack wait times out).
        let open = |path: &Path| {
            File::options()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))
        };
        let ctl = open(&ctl_path)?;
        let ack = open(&ack_path)?;
        let (send, acks) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(ack).lines() {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Controlled {
            child,
            ctl,
            acks,
            what,
            _fifos: fifos,
        })
    }

    /// Sends `enable` or `disable` and waits until perf has done it.
    fn command(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.ctl, "{command}")?;
        match self.acks.recv_timeout(ACK_TIMEOUT) {
            // perf writes the C string "ack\n" with its NUL: each ack after the first starts
            // with the previous one's.
            Ok(Ok(line))
                if line.trim_matches(|c: char| c == '\0' || c.is_whitespace()) == "ack" =>
            {
                Ok(())
            }
            Ok(Ok(line)) => anyhow::bail!("{}: {command} answered {line:?}", self.what),
            Ok(Err(err)) => Err(err).context(format!("{}: reading its ack", self.what)),
            Err(_) => {
                let _ = self.child.kill();
                let output = self.child.stderr.take().map(std::io::read_to_string);
                anyhow::bail!(
                    "{}: no ack for {command} within {ACK_TIMEOUT:?}; perf said: {}",
                    self.what,
                    output.and_then(Result::ok).unwrap_or_default().trim()
                )
            }
        }
    }

    /// Stops perf (SIGINT, as a terminal's Ctrl-C) and waits until it has written its output.
    fn finish(self) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id())?)
            .context("perf has no pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
        let output = self.child.wait_with_output()?;
        // perf stat ends itself with the SIGINT it was sent, after writing its counts.
        let interrupted = output.status.signal() == Some(rustix::process::Signal::INT.as_raw());
        anyhow::ensure!(
            output.status.success() || interrupted,
            "{} exited with {}: {}",
            self.what,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(())
    }
}

/// System calls and context switches of one process over a run.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// `raw_syscalls:sys_enter`: every system call any thread entered.
    pub syscalls: u64,
    /// `context-switches`: every time a thread of the process was switched out.
    pub context_switches: u64,
}

/// `perf stat` on each of a row's processes.
pub struct Counting {
    stats: Vec<(Controlled, PathBuf)>,
    _out: tempfile::TempDir,
}

impl Counting {
    /// Attaches one `perf stat` to each of `pids`, its events off until [`Counting::enable`].
    pub fn attach(pids: &[Pid]) -> anyhow::Result<Counting> {
        let out = tempfile::tempdir()?;
        let mut stats = Vec::new();
        for (i, &pid) in pids.iter().enumerate() {
            let file = out.path().join(format!("{i}.csv"));
            let args = [
                "stat".to_owned(),
                "-x,".to_owned(),
                "-e".to_owned(),
                EVENTS.to_owned(),
                "-p".to_owned(),
                os_pid(pid).to_string(),
                "-o".to_owned(),
                file.display().to_string(),
            ];
            let what = format!("perf stat -p {}", os_pid(pid));
            stats.push((Controlled::spawn(&args, what)?, file));
        }
        Ok(Counting { stats, _out: out })
    }

    /// Starts counting, in every process.
    pub fn enable(&mut self) -> anyhow::Result<()> {
        self.stats
            .iter_mut()
            .try_for_each(|(perf, _)| perf.command("enable"))
    }

    /// Stops counting and reads the counts, in the order of the pids given to `attach`.
    pub fn finish(mut self) -> anyhow::Result<Vec<Counts>> {
        for (perf, _) in &mut self.stats {
            perf.command("disable")?;
        }
        let mut counts = Vec::new();
        for (perf, file) in self.stats {
            perf.finish()?;
            counts.push(parse_stat(&std::fs::read_to_string(&file)?)?);
        }
        Ok(counts)
    }
}

/// The counts of a `perf stat -x,` file (`value,unit,event,…` per event; `<not counted>`
/// when the process never ran while counting).
fn parse_stat(csv: &str) -> anyhow::Result<Counts> {
    let count = |event: &str| -> anyhow::Result<u64> {
        let line = csv
            .lines()
            .find(|line| line.split(',').nth(2) == Some(event))
            .with_context(|| format!("perf stat printed no {event} count: {csv}"))?;
        let value = line.split(',').next().unwrap_or_default();
        if value.starts_with('<') {
            return Ok(0);
        }
        value
            .parse()
            .with_context(|| format!("the {event} count {value:?}"))
    };
    Ok(Counts {
        syscalls: count("raw_syscalls:sys_enter")?,
        context_switches: count("context-switches")?,
    })
}

/// `perf record` of a row's processes, drawn as a flamegraph when it finishes.
pub struct Profile {
    perf: Controlled,
    data: PathBuf,
    svg: PathBuf,
    title: String,
}

impl Profile {
    /// Attaches `perf record` to `pids` (samples off until [`Profile::enable`]); the
    /// flamegraph will be `dir/<name>.svg`, beside perf's `dir/<name>.perf.data`.
    pub fn attach(pids: &[Pid], dir: &Path, name: &str) -> anyhow::Result<Profile> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join(format!("{name}.perf.data"));
        let pids: Vec<String> = pids.iter().map(|&pid| os_pid(pid).to_string()).collect();
        // DWARF unwinding: release builds keep no frame pointers, but do keep .eh_frame.
        let args = [
            "record".to_owned(),
            "--quiet".to_owned(),
            "-F".to_owned(),
            "499".to_owned(),
            "--call-graph".to_owned(),
            "dwarf,16384".to_owned(),
            "-p".to_owned(),
            pids.join(","),
            "-o".to_owned(),
            data.display().to_string(),
        ];
        let perf = Controlled::spawn(&args, format!("perf record ({name})"))?;
        Ok(Profile {
            perf,
            svg: dir.join(format!("{name}.svg")),
            data,
            title: format!("wvpc-bench: {name}"),
        })
    }

    /// Starts sampling.
    pub fn enable(&mut self) -> anyhow::Result<()> {
        self.perf.command("enable")
    }

    /// Stops sampling, then folds the stacks (`perf script` into inferno's perf collapser) and
    /// draws them; returns the SVG's path. `--no-inline`: resolving inlined frames runs
    /// addr2line per address, minutes per row instead of a second.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        self.perf.command("disable")?;
        self.perf.finish()?;
        let script = Command::new("perf")
            .args(["script", "--no-inline", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("perf script")?;
        anyhow::ensure!(
            script.status.success(),
            "perf script -i {} exited with {}",
            self.data.display(),
            script.status
        );
        let mut folded = Vec::new();
        inferno::collapse::Collapse::collapse(
            &mut inferno::collapse::perf::Folder::default(),
            &script.stdout[..],
            &mut folded,
        )
        .context("folding perf's stacks")?;
        let mut options = inferno::flamegraph::Options::default();
        options.title = self.title;
        let svg =
            File::create(&self.svg).with_context(|| format!("creating {}", self.svg.display()))?;
        inferno::flamegraph::from_reader(&mut options, &folded[..], svg)
            .context("drawing the flamegraph")?;
        Ok(self.svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_processes_that_never_ran() {
        let csv = "# started on Thu Dec  3 23:01:45 2026\n\n\
                   7821,,raw_syscalls:sys_enter,58405671,100.00,,\n\
                   116,,context-switches,58422131,100.00,,\n";
        let counts = parse_stat(csv).unwrap();
        assert_eq!((counts.syscalls, counts.context_switches), (7821, 116));
        let idle = "<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n\
                    <not counted>,,context-switches,0,100.00,,\n";
        assert_eq!(parse_stat(idle).unwrap().syscalls, 0);
        assert!(parse_stat("garbage").is_err());
    }
}

//! The stable engine: replays a target's corpus, then mutates corpus inputs (bit flips, byte
//! edits, interesting integers, tokens of the text formats, splices of two inputs) for a given
//! time. There is no coverage feedback (that is what `cargo fuzz` adds on nightly); seeds made
//! from real messages keep the mutations close to what parsers accept.
//!
//! A panic is a failure: the input is written to `fuzz/artifacts/<target>/crash-<hash>` and the run
//! of that target stops. An input that runs longer than the hang limit is written as
//! `hang-<hash>` and the process exits, since a running call cannot be stopped.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use crate::Target;

/// How one target is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The corpus root: inputs are read from `<corpus>/<target>/`.
    pub corpus: PathBuf,
    /// Where failing inputs are written (`<crashes>/<target>/`).
    pub crashes: PathBuf,
    /// How long to mutate after the replay (zero: replay only).
    pub duration: Duration,
    /// At most this many mutated runs (whatever the time left).
    pub max_runs: Option<u64>,
    /// Seed of the mutations, for reproducible runs.
    pub seed: u64,
    /// Longest input generated.
    pub max_len: usize,
    /// One input running longer than this is a hang.
    pub hang_after: Duration,
}

impl Options {
    /// The repository's corpus and `fuzz/artifacts` (as cargo-fuzz), 4 KiB inputs, 10 s hang
    /// limit.
    pub fn new(duration: Duration, seed: u64) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Self {
            corpus: root.join("corpus"),
            crashes: root.join("artifacts"),
            duration,
            max_runs: None,
            seed,
            max_len: 4096,
            hang_after: Duration::from_secs(10),
        }
    }
}

/// What running one target did.
#[derive(Debug)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Corpus inputs replayed.
    pub replayed: usize,
    /// Mutated inputs run.
    pub runs: u64,
    /// Time spent mutating.
    pub elapsed: Duration,
    /// The first input that broke a property, if any.
    pub failure: Option<Failure>,
}

/// An input that panicked.
#[derive(Debug)]
pub struct Failure {
    /// Where the input was saved (or the corpus file it came from).
    pub input: PathBuf,
    /// The panic message with its location.
    pub message: String,
}

/// The inputs of `<corpus>/<target>/`, sorted by file name.
pub fn corpus(root: &Path, target: &str) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = root.join(target);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err),
    };
    paths.retain(|p| p.is_file());
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(&p).map(|bytes| (p, bytes)))
        .collect()
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Panics are recorded for the report instead of printed (a run may see many).
fn capture_panics() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
        }));
    });
}

/// Runs one input; `Err` carries the panic message.
pub fn run_one(target: Target, input: &[u8]) -> Result<(), String> {
    capture_panics();
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|_| {
        LAST_PANIC
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| "panicked".into())
    })
}

fn save(dir: &Path, kind: &str, input: &[u8]) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    input.hash(&mut hasher);
    let path = dir.join(format!("{kind}-{:016x}", hasher.finish()));
    if let Err(err) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("cannot save the failing input to {}: {err}", path.display());
    }
    path
}

/// Replays the corpus, then mutates it for `options.duration`.
pub fn fuzz(target: Target, options: &Options) -> std::io::Result<Report> {
    let inputs = corpus(&options.corpus, target.name)?;
    let mut report = Report {
        target: target.name,
        replayed: 0,
        runs: 0,
        elapsed: Duration::ZERO,
        failure: None,
    };
    for (path, input) in &inputs {
        if let Err(message) = run_one(target, input) {
            report.failure = Some(Failure {
                input: path.clone(),
                message,
            });
            return Ok(report);
        }
        report.replayed += 1;
    }
    if options.duration.is_zero() && options.max_runs.is_none() {
        return Ok(report);
    }

    let crashes = options.crashes.join(target.name);
    let watchdog = Watchdog::start(crashes.clone(), options.hang_after);
    let mut rng = SmallRng::seed_from_u64(options.seed);
    let pool: Vec<&[u8]> = inputs.iter().map(|(_, b)| b.as_slice()).collect();
    let started = Instant::now();
    let mut input = Vec::with_capacity(options.max_len);
    while started.elapsed() < options.duration || options.duration.is_zero() {
        if options.max_runs.is_some_and(|max| report.runs >= max) {
            break;
        }
        next_input(&mut rng, &pool, options.max_len, &mut input);
        watchdog.starting(&input);
        let outcome = run_one(target, &input);
        watchdog.finished();
        report.runs += 1;
        if let Err(message) = outcome {
            report.failure = Some(Failure {
                input: save(&crashes, "crash", &input),
                message,
            });
            break;
        }
    }
    report.elapsed = started.elapsed();
    watchdog.stop();
    Ok(report)
}

/// Watches the input in flight; saves it and exits the process when it runs too long.
struct Watchdog {
    state: Arc<WatchState>,
}

struct WatchState {
    input: Mutex<Vec<u8>>,
    /// Milliseconds since `epoch` when the current input started; `u64::MAX` when idle.
    started_ms: AtomicU64,
    epoch: Instant,
    stop: AtomicBool,
}

impl Watchdog {
    fn start(crashes: PathBuf, limit: Duration) -> Self {
        let state = Arc::new(WatchState {
            input: Mutex::new(Vec::new()),
            started_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let watched = Arc::clone(&state);
        std::thread::spawn(move || {
            while !watched.stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(200));
                let started = watched.started_ms.load(Ordering::Relaxed);
                let now = u64::try_from(watched.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
                if started != u64::MAX && now.saturating_sub(started) > limit_ms {
                    let input = watched.input.lock().unwrap_or_else(|e| e.into_inner());
                    let path = save(&crashes, "hang", &input);
                    eprintln!(
                        "FAILED: an input ran longer than {limit:?}; saved to {}",
                        path.display()
                    );
                    std::process::exit(2);
                }
            }
        });
        Self { state }
    }

    fn starting(&self, input: &[u8]) {
        {
            let mut current = self.state.input.lock().unwrap_or_else(|e| e.into_inner());
            current.clear();
            current.extend_from_slice(input);
        }
        let now = u64::try_from(self.state.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.state.started_ms.store(now, Ordering::Relaxed);
    }

    fn finished(&self) {
        self.state.started_ms.store(u64::MAX, Ordering::Relaxed);
    }

    fn stop(self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes the text formats give meaning to.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b";",
    b"\r\n",
    b"\n",
    b"--",
    b"//",
    b"/*",
    b"*/",
    b"://",
    b"#",
    b"\0asm",
    b"null",
    b"true",
    b"false",
    b"-1",
    b"0",
    b"1e999",
    b"65536",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\xff",
    b"\xc3\xa9",
    b"%",
    b"*",
    b".",
    b"..",
    b"[[",
    b"]]",
    b"'''",
    b"\"\"\"",
];

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
];

/// The next input: a corpus input (or, sometimes, random bytes) with a few mutations.
fn next_input(rng: &mut SmallRng, pool: &[&[u8]], max_len: usize, out: &mut Vec<u8>) {
    out.clear();
    if pool.is_empty() || rng.random_ratio(1, 32) {
        let len = rng.random_range(0..=256.min(max_len));
        out.extend((0..len).map(|_| rng.random::<u8>()));
        return;
    }
    out.extend_from_slice(pool[rng.random_range(0..pool.len())]);
    for _ in 0..rng.random_range(1..=4) {
        mutate(rng, pool, out);
    }
    out.truncate(max_len);
}

fn mutate(rng: &mut SmallRng, pool: &[&[u8]], data: &mut Vec<u8>) {
    let len = data.len();
    let at = |rng: &mut SmallRng| {
        if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..10) {
        0 if len > 0 => {
            let i = at(rng);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng);
            data[i] = rng.random();
        }
        2 => {
            let i = rng.random_range(0..=len);
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(16));
            data.drain(i..i + n);
        }
        4 if len > 0 => {
            // Duplicate a range (repeated fields, list entries).
            let i = at(rng);
            let n = rng.random_range(1..=(len - i).min(64));
            let copy = data[i..i + n].to_vec();
            let j = rng.random_range(0..=len);
            data.splice(j..j, copy);
        }
        5 if len > 0 => {
            // An interesting integer over 1, 2, 4 or 8 bytes, either endianness.
            let width = *[1usize, 2, 4, 8].get(rng.random_range(0..4)).unwrap_or(&1);
            let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let bytes = if rng.random() {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let bytes = if bytes[0] == 0 && width < 8 {
                &bytes[8 - width..]
            } else {
                &bytes[..width]
            };
            let i = at(rng);
            let end = (i + bytes.len()).min(len);
            data[i..end].copy_from_slice(&bytes[..end - i]);
        }
        6 => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let i = rng.random_range(0..=len);
            data.splice(i..i, token.iter().copied());
        }
        7 if !pool.is_empty() => {
            // Splice in a piece of another input.
            let other = pool[rng.random_range(0..pool.len())];
            if !other.is_empty() {
                let from = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - from).min(256));
                let i = rng.random_range(0..=len);
                if rng.random() {
                    data.splice(i..i, other[from..from + n].iter().copied());
                } else {
                    let end = (i + n).min(len);
                    data.splice(i..end, other[from..from + n].iter().copied());
                }
            }
        }
        8 if len > 0 => {
            data.truncate(at(rng));
        }
        _ if len > 1 => {
            // Swap two bytes.
            let (i, j) = (at(rng), at(rng));
            data.swap(i, j);
        }
        _ => data.push(rng.random()),
    }
}

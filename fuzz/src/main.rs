//! `wvpc-fuzz`: runs the fuzz targets on stable (see the library docs): replays each target's
//! corpus, then mutates it for `--seconds` per target. Exits non-zero when a target fails.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wvpc_fuzz::runner::{self, Options};
use wvpc_fuzz::{TARGETS, Target};

/// Runs the fuzz targets without libFuzzer.
#[derive(Debug, Parser)]
#[command(name = "wvpc-fuzz")]
struct Args {
    /// Seconds of mutations per target after the corpus replay (0: replay only)
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seed of the mutations [default: from the clock, printed]
    #[arg(long)]
    seed: Option<u64>,
    /// Write the seed corpus (`seed-*` files) into fuzz/corpus and exit
    #[arg(long)]
    write_seeds: bool,
    /// List the targets and exit
    #[arg(long)]
    list: bool,
    /// Targets to run [default: all]
    targets: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for target in TARGETS {
            println!("{:<18} {}", target.name, target.about);
        }
        return ExitCode::SUCCESS;
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let options = Options::new(Duration::from_secs_f64(args.seconds.max(0.0)), seed);
    if args.write_seeds {
        for (target, name, bytes) in wvpc_fuzz::seeds::seeds() {
            let dir = options.corpus.join(target);
            let path = dir.join(format!("seed-{name}"));
            if let Err(err) =
                std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes))
            {
                eprintln!("cannot write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
        println!("seeds written to {}", options.corpus.display());
        return ExitCode::SUCCESS;
    }
    let targets: Vec<Target> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        let mut chosen = Vec::new();
        for name in &args.targets {
            match wvpc_fuzz::target(name) {
                Some(target) => chosen.push(target),
                None => {
                    eprintln!("unknown target {name:?}; `wvpc-fuzz --list` lists them");
                    return ExitCode::FAILURE;
                }
            }
        }
        chosen
    };
    println!("seed {seed}, {} s per target", args.seconds);
    let (mut passed, mut failed) = (0, 0);
    for target in targets {
        match runner::fuzz(target, &options) {
            Ok(report) => match report.failure {
                None => {
                    passed += 1;
                    println!(
                        "ok     {:<18} {} corpus inputs, {} runs in {:.1} s",
                        report.target,
                        report.replayed,
                        report.runs,
                        report.elapsed.as_secs_f64()
                    );
                }
                Some(failure) => {
                    failed += 1;
                    println!(
                        "FAILED {:<18} input {}\n       {}",
                        report.target,
                        failure.input.display(),
                        failure.message
                    );
                }
            },
            Err(err) => {
                failed += 1;
                println!("FAILED {:<18} cannot read the corpus: {err}", target.name);
            }
        }
    }
    wvpc_fuzz::targets::remove_scratch();
    println!("fuzz: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! Every target against its committed corpus (seeds and regression inputs), then a short,
//! fixed-seed round of mutations; and the cargo-fuzz binaries match the registered targets.

use std::time::Duration;

use wvpc_fuzz::TARGETS;
use wvpc_fuzz::runner::{self, Options};

#[test]
fn every_target_passes_its_corpus_and_a_few_hundred_mutations() {
    let mut options = Options::new(Duration::ZERO, 15);
    options.max_runs = Some(300);
    let mut failures = Vec::new();
    for target in TARGETS {
        let report = runner::fuzz(*target, &options).expect("reading the corpus");
        assert!(report.replayed > 0, "{} has no corpus", target.name);
        if let Some(failure) = report.failure {
            failures.push(format!(
                "{}: {} ({})",
                target.name,
                failure.message,
                failure.input.display()
            ));
        }
    }
    wvpc_fuzz::targets::remove_scratch();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_target_has_a_cargo_fuzz_binary_and_nothing_else_does() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("reading Cargo.toml");
    let bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|name| *name != "wvpc-fuzz")
        .collect();
    let mut names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    let mut bins_sorted = bins.clone();
    names.sort_unstable();
    bins_sorted.sort_unstable();
    assert_eq!(bins_sorted, names);
    for name in names {
        let entry = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        let source = std::fs::read_to_string(&entry).expect("reading the fuzz target");
        assert!(
            source.contains(&format!("::{name}(data)")),
            "{}",
            entry.display()
        );
    }
}

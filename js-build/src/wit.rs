//! The script world's WIT as the JavaScript engine needs it. componentize-js 0.23.0's engine
//! (StarlingMonkey) is built against WASI 0.2.10, so its imports and its
//! `wasi:http/incoming-handler` export must be `@0.2.10`; the project's WIT
//! (`schemas/wit`, 0.2.12) is rewritten to that version, less the one function added after
//! it (`wasi:cli/exit.exit-with-code`). The runtime links the 0.2.10 component against its
//! 0.2.12 host: wasmtime matches WASI imports and exports semver-compatibly.

/// The WASI version of the engine.
pub const ENGINE_WASI: &str = "0.2.10";
/// The WASI version of the project's WIT.
const PROJECT_WASI: &str = "0.2.12";

const SOURCES: &[(&str, &str)] = &[
    ("vpc.wit", include_str!("../../schemas/wit/vpc.wit")),
    (
        "deps/cli.wit",
        include_str!("../../schemas/wit/deps/cli.wit"),
    ),
    (
        "deps/clocks.wit",
        include_str!("../../schemas/wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../schemas/wit/deps/filesystem.wit"),
    ),
    (
        "deps/http.wit",
        include_str!("../../schemas/wit/deps/http.wit"),
    ),
    ("deps/io.wit", include_str!("../../schemas/wit/deps/io.wit")),
    (
        "deps/random.wit",
        include_str!("../../schemas/wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../schemas/wit/deps/sockets.wit"),
    ),
];

/// The WIT files (path relative to the WIT directory, text) pinned to [`ENGINE_WASI`].
pub fn files() -> Vec<(String, String)> {
    SOURCES
        .iter()
        .map(|(name, text)| ((*name).to_owned(), pin(text)))
        .collect()
}

/// `text` at [`ENGINE_WASI`]: versions rewritten, items added after it removed.
fn pin(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == format!("@since(version = {PROJECT_WASI})") {
            // The annotated item (one line) goes with its annotation.
            lines.next();
            continue;
        }
        out.push_str(&line.replace(PROJECT_WASI, ENGINE_WASI));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_pinned_and_exit_with_code_is_gone() {
        let files = files();
        assert_eq!(files.len(), SOURCES.len());
        for (name, text) in &files {
            assert!(
                !text.contains(PROJECT_WASI),
                "{name} still names {PROJECT_WASI}"
            );
        }
        let cli = &files.iter().find(|(n, _)| n == "deps/cli.wit").unwrap().1;
        assert!(!cli.contains("exit-with-code"), "{cli}");
        assert!(
            cli.contains("exit: func(status: result);"),
            "the rest of wasi:cli/exit stays"
        );
        let vpc = &files.iter().find(|(n, _)| n == "vpc.wit").unwrap().1;
        assert!(vpc.contains("include wasi:http/proxy@0.2.10;"), "{vpc}");
    }
}

//! Fuzz targets for every parser that takes bytes from a peer or a user, and a stable runner.
//!
//! Each target is a plain function of the input bytes that asserts properties of the parser
//! (round trips, bounds, typed errors) and panics when one breaks. Two engines drive them:
//!
//! - `cargo fuzz` (libFuzzer, nightly): the binaries in `fuzz_targets/`, one per target, built
//!   with the `libfuzzer` feature (`scripts/fuzz`);
//! - [`runner`] (stable, no coverage feedback): replays `fuzz/corpus/<target>/` and then
//!   mutates the corpus for a given time per target (`wvpc-fuzz`, `scripts/fuzz --short`).
//!
//! The corpus lives in the repository (`fuzz/corpus/<target>/`): seeds made by [`seeds`] from
//! real messages, plus every input that once broke a target, named `regression-*`.

#![forbid(unsafe_code)]

pub mod runner;
pub mod seeds;
pub mod targets;

/// One fuzz target: its name (also its corpus folder and cargo-fuzz binary) and its function.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name, e.g. `datagram_v3`.
    pub name: &'static str,
    /// What it parses.
    pub about: &'static str,
    /// Runs one input; panics when a property breaks.
    pub run: fn(&[u8]),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every target, in the order the runner takes them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "datagram_v3",
        about: "datagram v3 codec (UDP sessions in QUIC DATAGRAM frames)",
        run: targets::tunnel::datagram_v3,
    },
    Target {
        name: "datagram_v2",
        about: "datagram v2 codec",
        run: targets::tunnel::datagram_v2,
    },
    Target {
        name: "stream_preamble",
        about: "stream signatures and the data-stream version",
        run: targets::tunnel::stream_preamble,
    },
    Target {
        name: "connect_request",
        about: "ConnectRequest after a data-stream signature",
        run: targets::tunnel::connect_request,
    },
    Target {
        name: "connect_response",
        about: "ConnectResponse with its preamble",
        run: targets::tunnel::connect_response,
    },
    Target {
        name: "binding_handshake",
        about: "the platform handshake a binding-worker runs before capnp",
        run: targets::binding::binding_handshake,
    },
    Target {
        name: "binding_fetch",
        about: "VpcBinding.fetch parameters and WireError as the binding-worker reads them",
        run: targets::binding::binding_fetch,
    },
    Target {
        name: "dns_answer",
        about: "DNS answers over UDP and TCP as iris's resolver reads them",
        run: targets::dns::dns_answer,
    },
    Target {
        name: "proxy_status",
        about: "RFC 9209 Proxy-Status field values",
        run: targets::errors::proxy_status,
    },
    Target {
        name: "wrangler_config",
        about: "wrangler.jsonc / wrangler.toml script configs",
        run: targets::config::wrangler_config,
    },
    Target {
        name: "service_json",
        about: "service objects of the directory API (create, replace)",
        run: targets::directory::service_json,
    },
    Target {
        name: "script_upload",
        about: "multipart script uploads of the directory API",
        run: targets::directory::script_upload,
    },
    Target {
        name: "credentials",
        about: "tunnel tokens and credentials files",
        run: targets::credentials::credentials,
    },
    Target {
        name: "api_token",
        about: "API bearer tokens checked by the directory",
        run: targets::directory::api_token,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

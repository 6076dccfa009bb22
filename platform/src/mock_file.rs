//! The mock file of `wvpc dev --mock` (`wvpc.mock.jsonc`; JSON, JSONC or TOML): read with the
//! script config's parser and checked the same way, every problem at once with its field path,
//! into the [`MockSpec`] the [`wvpc_iris::dev_mock::MockNetwork`] serves.
//!
//! ```jsonc
//! { "bindings": { "API": {
//!     "upstream": "127.0.0.1:9000",
//!     "host": "api.internal",
//!     "responses": [ { "method": "GET", "path": "/users/*", "status": 200,
//!                      "headers": { "content-type": "application/json" }, "body": "{\"id\":1}" } ],
//!     "dns": { "api.internal": ["127.0.0.1"] },
//!     "faults": [ { "path": "/flaky/*", "code": "connection_refused", "rate": 50, "latency_ms": 200 } ]
//! } } }
//! ```
//!
//! Unknown keys, wrong types and bindings the script does not declare are refused.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use wvpc_iris::dev_mock::{BindingMock, CannedResponse, Fault, FaultCode, MockSpec};
use wvpc_runtime::{ConfigError, ConfigProblem, ConfigValue, ScriptConfig};

/// The mock file looked for next to the script's config when `--mock` names none.
pub const DEFAULT_MOCK_FILE: &str = "wvpc.mock.jsonc";

const BINDING_KEYS: &str = "upstream, host, responses, dns, faults";
const RESPONSE_KEYS: &str = "method, path, status, headers, body, body_file";
const FAULT_KEYS: &str = "method, path, code, latency_ms, rate";

/// Why a mock file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MockFileError {
    /// Not a `.jsonc`, `.json` or `.toml` file.
    #[error("mock file {}: unsupported file type (use a .jsonc, .json or .toml file)", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// Unreadable, malformed or invalid (the message lists every problem with its path).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Reads and checks the mock file at `path` for `script` (whose `vpc_services` name the
/// bindings it may mock). `body_file`s are read relative to the file's directory.
pub fn load(path: &Path, script: &ScriptConfig) -> Result<MockSpec, MockFileError> {
    let raw = ConfigValue::read(path)?
        .ok_or_else(|| MockFileError::UnsupportedFormat { path: path.into() })?;
    let base = path.parent().unwrap_or_else(|| Path::new(""));
    let declared: Vec<&str> = script
        .vpc_services
        .iter()
        .map(|b| b.binding.as_str())
        .collect();
    let mut check = Checker {
        raw: &raw,
        base,
        problems: Vec::new(),
    };
    let spec = check.root(&declared);
    if check.problems.is_empty() {
        Ok(spec)
    } else {
        Err(ConfigError::Invalid {
            path: path.into(),
            problems: check.problems,
        }
        .into())
    }
}

/// Checks one fault entry in the mock file's shape (`{"code": …, "method": …, "path": …,
/// "rate": …, "latency_ms": …}`) found at `field` of another file (the cases of `wvpc test`):
/// the rule, or every problem with its path.
pub fn fault_entry(value: &Value, field: &str) -> Result<Fault, Vec<ConfigProblem>> {
    let raw = ConfigValue {
        value: Value::Null,
        toml: false,
    };
    let mut check = Checker {
        raw: &raw,
        base: Path::new(""),
        problems: Vec::new(),
    };
    match check.fault(value, field) {
        Some(fault) if check.problems.is_empty() => Ok(fault),
        _ => Err(check.problems),
    }
}

/// The mock file's path: `given`, or [`DEFAULT_MOCK_FILE`] next to the script's config.
pub fn path_for(given: Option<&Path>, config_path: &Path) -> PathBuf {
    match given {
        Some(path) => path.to_owned(),
        None => config_path
            .parent()
            .unwrap_or_else(|| Path::new(""))
            .join(DEFAULT_MOCK_FILE),
    }
}

/// Follows the mock file: [`MockFileWatch::poll`] reloads it into the network when its
/// modification time or size changed since the last look. A file that fails to load leaves
/// the network as it was (the last good mock).
#[derive(Debug)]
pub struct MockFileWatch {
    path: PathBuf,
    seen: Option<(std::time::SystemTime, u64)>,
}

/// How often `wvpc dev --mock` looks at the mock file.
pub const MOCK_FILE_POLL: Duration = Duration::from_millis(300);

impl MockFileWatch {
    /// Watches `path`, taking its current state as loaded.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            seen: stamp(path),
        }
    }

    /// `None` when the file did not change; else the outcome of loading it into `network`.
    pub fn poll(
        &mut self,
        script: &ScriptConfig,
        network: &wvpc_iris::dev_mock::MockNetwork,
    ) -> Option<Result<(), MockFileError>> {
        let now = stamp(&self.path);
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(load(&self.path, script).and_then(|spec| {
            network.replace(spec).map_err(|err| {
                MockFileError::Config(ConfigError::Invalid {
                    path: self.path.clone(),
                    problems: vec![ConfigProblem {
                        field: "bindings".into(),
                        message: err.to_string(),
                    }],
                })
            })
        }))
    }
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

struct Checker<'a> {
    raw: &'a ConfigValue,
    base: &'a Path,
    problems: Vec<ConfigProblem>,
}

impl Checker<'_> {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn map_word(&self) -> &'static str {
        if self.raw.toml {
            "a table"
        } else {
            "an object"
        }
    }

    fn object<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                let message = format!(
                    "expected {}, found {}",
                    self.map_word(),
                    self.raw.kind(other)
                );
                self.problem(field, message);
                None
            }
        }
    }

    fn array<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v Vec<Value>> {
        match value {
            Value::Array(items) => Some(items),
            other => {
                let message = format!("expected an array, found {}", self.raw.kind(other));
                self.problem(field, message);
                None
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                let message = format!("expected a string, found {}", self.raw.kind(other));
                self.problem(field, message);
                None
            }
        }
    }

    fn unknown_keys(&mut self, map: &Map<String, Value>, field: &str, known: &str) {
        let known_list: Vec<&str> = known.split(", ").collect();
        for key in map.keys() {
            if !known_list.contains(&key.as_str()) {
                self.problem(
                    format!("{field}.{key}"),
                    format!("unknown key (known keys: {known})"),
                );
            }
        }
    }

    fn root(&mut self, declared: &[&str]) -> MockSpec {
        let mut spec = MockSpec::default();
        let raw = self.raw;
        let Some(root) = self.object(&raw.value, "(top level)") else {
            return spec;
        };
        self.unknown_keys(root, "(top level)", "bindings");
        let Some(bindings) = root.get("bindings") else {
            self.problem(
                "bindings",
                "missing (map each binding name of the script to what it meets, e.g. \
                 {\"API\": {\"upstream\": \"127.0.0.1:9000\"}})",
            );
            return spec;
        };
        let Some(bindings) = self.object(bindings, "bindings") else {
            return spec;
        };
        for (name, value) in bindings {
            let field = format!("bindings.{name}");
            if !declared.contains(&name.as_str()) {
                let known = if declared.is_empty() {
                    "it declares none".to_owned()
                } else {
                    format!("it declares {}", declared.join(", "))
                };
                self.problem(
                    &field,
                    format!(
                        "the script's config has no binding {name:?} in its vpc_services ({known})"
                    ),
                );
            }
            if let Some(binding) = self.binding(value, &field) {
                spec.bindings.insert(name.clone(), binding);
            }
        }
        spec
    }

    fn binding(&mut self, value: &Value, field: &str) -> Option<BindingMock> {
        let map = self.object(value, field)?;
        self.unknown_keys(map, field, BINDING_KEYS);
        let mut mock = BindingMock::default();
        if let Some(upstream) = map.get("upstream") {
            let sub = format!("{field}.upstream");
            if let Some(text) = self.string(upstream, &sub) {
                match text.parse::<SocketAddr>() {
                    Ok(addr) => mock.upstream = Some(addr),
                    Err(_) => self.problem(
                        sub,
                        format!("{text:?} is not an IP:PORT address (e.g. \"127.0.0.1:9000\")"),
                    ),
                }
            }
        }
        if let Some(host) = map.get("host") {
            let sub = format!("{field}.host");
            if let Some(text) = self.string(host, &sub) {
                if is_hostname(text) {
                    mock.host = Some(text.to_ascii_lowercase());
                } else {
                    self.problem(
                        sub,
                        format!("{text:?} is not a hostname (e.g. \"api.internal\")"),
                    );
                }
            }
        }
        if let Some(responses) = map.get("responses") {
            let sub = format!("{field}.responses");
            if let Some(items) = self.array(responses, &sub) {
                for (i, item) in items.iter().enumerate() {
                    if let Some(response) = self.response(item, &format!("{sub}[{i}]")) {
                        mock.responses.push(response);
                    }
                }
            }
        }
        if let Some(dns) = map.get("dns") {
            let sub = format!("{field}.dns");
            if let Some(names) = self.object(dns, &sub) {
                for (name, ips) in names {
                    let entry = format!("{sub}.{name}");
                    if !is_hostname(name) {
                        self.problem(&entry, "not a hostname (e.g. \"api.internal\")");
                    }
                    let Some(ips) = self.array(ips, &entry) else {
                        continue;
                    };
                    let mut addresses = Vec::new();
                    for (i, ip) in ips.iter().enumerate() {
                        let at = format!("{entry}[{i}]");
                        if let Some(text) = self.string(ip, &at) {
                            match text.parse::<IpAddr>() {
                                Ok(ip) => addresses.push(ip),
                                Err(_) => self.problem(
                                    at,
                                    format!("{text:?} is not an IP address (e.g. \"127.0.0.1\")"),
                                ),
                            }
                        }
                    }
                    mock.dns.insert(name.to_ascii_lowercase(), addresses);
                }
            }
        }
        if let Some(faults) = map.get("faults") {
            let sub = format!("{field}.faults");
            if let Some(items) = self.array(faults, &sub) {
                for (i, item) in items.iter().enumerate() {
                    if let Some(fault) = self.fault(item, &format!("{sub}[{i}]")) {
                        mock.faults.push(fault);
                    }
                }
            }
        }
        Some(mock)
    }

    fn method(&mut self, map: &Map<String, Value>, field: &str) -> Option<String> {
        let value = map.get("method")?;
        let sub = format!("{field}.method");
        let text = self.string(value, &sub)?;
        if http::Method::from_bytes(text.as_bytes()).is_ok() && !text.is_empty() {
            Some(text.to_ascii_uppercase())
        } else {
            self.problem(
                sub,
                format!("{text:?} is not an HTTP method (e.g. \"GET\")"),
            );
            None
        }
    }

    fn path(&mut self, map: &Map<String, Value>, field: &str, required: bool) -> Option<String> {
        let sub = format!("{field}.path");
        let Some(value) = map.get("path") else {
            if required {
                self.problem(
                    sub,
                    "missing (e.g. \"/users/*\"; `*` matches any characters)",
                );
            }
            return None;
        };
        let text = self.string(value, &sub)?;
        if text.starts_with('/') || text.starts_with('*') {
            Some(text.to_owned())
        } else {
            self.problem(
                sub,
                format!("{text:?} must start with / or * (e.g. \"/users/*\")"),
            );
            None
        }
    }

    fn response(&mut self, value: &Value, field: &str) -> Option<CannedResponse> {
        let map = self.object(value, field)?;
        self.unknown_keys(map, field, RESPONSE_KEYS);
        let method = self.method(map, field);
        let path = self.path(map, field, true);
        let status = match map.get("status") {
            None => Some(200),
            Some(value) => {
                let sub = format!("{field}.status");
                match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    Some(n) if (100..=599).contains(&n) => Some(n),
                    _ => {
                        let message = format!(
                            "expected a status from 100 to 599, found {}",
                            describe(self.raw, value)
                        );
                        self.problem(sub, message);
                        None
                    }
                }
            }
        };
        let mut headers = Vec::new();
        if let Some(value) = map.get("headers") {
            let sub = format!("{field}.headers");
            if let Some(entries) = self.object(value, &sub) {
                for (name, value) in entries {
                    let at = format!("{sub}.{name}");
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        self.problem(&at, "not a valid header name");
                    }
                    // A header sent more than once (`set-cookie`) is an array of its values.
                    let values: Vec<(String, &Value)> = match value {
                        Value::Array(items) => items
                            .iter()
                            .enumerate()
                            .map(|(i, item)| (format!("{at}[{i}]"), item))
                            .collect(),
                        single => vec![(at.clone(), single)],
                    };
                    for (at, value) in values {
                        let Some(text) = (match value {
                            Value::String(text) => Some(text),
                            other => {
                                let message = format!(
                                    "expected a string (or an array of strings for a header sent \
                                     more than once), found {}",
                                    self.raw.kind(other)
                                );
                                self.problem(&at, message);
                                None
                            }
                        }) else {
                            continue;
                        };
                        if http::HeaderValue::from_str(text).is_err() {
                            self.problem(&at, "not a valid header value (no control characters)");
                        } else {
                            headers.push((name.clone(), text.clone()));
                        }
                    }
                }
            }
        }
        let body = match (map.get("body"), map.get("body_file")) {
            (Some(_), Some(_)) => {
                self.problem(
                    format!("{field}.body_file"),
                    "give either body or body_file, not both",
                );
                None
            }
            (Some(Value::String(text)), None) => Some(Bytes::from(text.clone())),
            // A JSON body can be written as JSON.
            (Some(value @ (Value::Object(_) | Value::Array(_))), None) => {
                Some(Bytes::from(value.to_string()))
            }
            (Some(other), None) => {
                let message = format!(
                    "expected a string (or a JSON object or array), found {}",
                    self.raw.kind(other)
                );
                self.problem(format!("{field}.body"), message);
                None
            }
            (None, Some(file)) => {
                let sub = format!("{field}.body_file");
                let name = self.string(file, &sub)?;
                let full = self.base.join(name);
                match std::fs::read(&full) {
                    Ok(bytes) => Some(Bytes::from(bytes)),
                    Err(err) => {
                        self.problem(
                            sub,
                            format!(
                                "cannot read {} ({err}); paths are relative to the mock file",
                                full.display()
                            ),
                        );
                        None
                    }
                }
            }
            (None, None) => Some(Bytes::new()),
        };
        Some(CannedResponse {
            method,
            path: path?,
            status: status?,
            headers,
            body: body?,
        })
    }

    fn fault(&mut self, value: &Value, field: &str) -> Option<Fault> {
        let map = self.object(value, field)?;
        self.unknown_keys(map, field, FAULT_KEYS);
        let method = self.method(map, field);
        let path = self.path(map, field, false);
        let names: Vec<&str> = FaultCode::ALL.iter().map(|c| c.name()).collect();
        let mut ok = true;
        let code = match map.get("code") {
            None => None,
            Some(value) => {
                let sub = format!("{field}.code");
                match self.string(value, &sub) {
                    Some(text) => match FaultCode::parse(text) {
                        Some(code) => Some(code),
                        None => {
                            self.problem(
                                sub,
                                format!(
                                    "{text:?} is not a fault code (use one of {})",
                                    names.join(", ")
                                ),
                            );
                            ok = false;
                            None
                        }
                    },
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let latency = match map.get("latency_ms") {
            None => Duration::ZERO,
            Some(value) => match value.as_u64() {
                Some(ms) if ms <= 3_600_000 => Duration::from_millis(ms),
                _ => {
                    let message = format!(
                        "expected milliseconds from 0 to 3600000, found {}",
                        describe(self.raw, value)
                    );
                    self.problem(format!("{field}.latency_ms"), message);
                    ok = false;
                    Duration::ZERO
                }
            },
        };
        let rate = match map.get("rate") {
            None => 100,
            Some(value) => match value.as_f64() {
                Some(rate) if (0.0..=100.0).contains(&rate) => rate.round() as u8,
                _ => {
                    let message = format!(
                        "expected a percentage from 0 to 100, found {}",
                        describe(self.raw, value)
                    );
                    self.problem(format!("{field}.rate"), message);
                    ok = false;
                    100
                }
            },
        };
        if ok && code.is_none() && latency.is_zero() {
            self.problem(
                field,
                format!(
                    "a fault needs a code ({}) or a latency_ms",
                    names.join(", ")
                ),
            );
            ok = false;
        }
        (ok && (map.get("method").is_none() || method.is_some())
            && (map.get("path").is_none() || path.is_some()))
        .then_some(Fault {
            method,
            path,
            code,
            latency,
            rate,
        })
    }
}

/// A value in a message: numbers as written, anything else by kind.
fn describe(raw: &ConfigValue, value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        other => raw.kind(other).to_owned(),
    }
}

fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;
    use wvpc_runtime::VpcServiceBinding;

    fn script(bindings: &[&str]) -> ScriptConfig {
        ScriptConfig {
            name: "s".into(),
            main: "s.wasm".into(),
            vpc_services: bindings
                .iter()
                .map(|b| VpcServiceBinding {
                    binding: (*b).into(),
                    service_id: Uuid::nil(),
                })
                .collect(),
            vpc_networks: Vec::new(),
            limits: Default::default(),
        }
    }

    /// A throwaway folder for the files a test reads.
    struct Dir(tempfile::TempDir);
    impl Dir {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    fn problems(err: MockFileError) -> Vec<String> {
        match err {
            MockFileError::Config(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected problems, got {other}"),
        }
    }

    #[test]
    fn the_issue_example_reads_into_the_model() {
        let dir = Dir::new();
        dir.write("user.json", "{\"id\":2}");
        let path = dir.write(
            "wvpc.mock.jsonc",
            r#"{ "bindings": { "API": {
                // comments are fine
                "upstream": "127.0.0.1:9000",
                "responses": [
                  { "method": "GET", "path": "/users/1", "status": 200,
                    "headers": { "content-type": "application/json" }, "body": "{\"id\":1}" },
                  { "path": "/users/2", "body_file": "user.json" },
                ],
                "dns": { "api.internal": ["127.0.0.1"] },
                "faults": [ { "path": "/flaky/*", "code": "connection_refused", "rate": 100 },
                            { "latency_ms": 250 } ]
            } } }"#,
        );
        let spec = load(&path, &script(&["API"])).unwrap();
        let api = &spec.bindings["API"];
        assert_eq!(api.upstream, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(api.responses[0].method.as_deref(), Some("GET"));
        assert_eq!(api.responses[0].body, Bytes::from_static(b"{\"id\":1}"));
        assert_eq!(
            api.responses[0].headers,
            vec![("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(api.responses[1].status, 200);
        assert_eq!(api.responses[1].body, Bytes::from_static(b"{\"id\":2}"));
        assert_eq!(
            api.dns["api.internal"],
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            api.faults[0],
            Fault::new(FaultCode::ConnectionRefused).on_path("/flaky/*")
        );
        assert_eq!(api.faults[1], Fault::latency(Duration::from_millis(250)));
    }

    #[test]
    fn a_header_sent_more_than_once_is_an_array() {
        let dir = Dir::new();
        let path = dir.write(
            "wvpc.mock.jsonc",
            r#"{ "bindings": { "API": { "responses": [
                { "path": "/", "headers": { "set-cookie": ["a=1", "b=2"], "x": "y" } },
                { "path": "/bad", "headers": { "set-cookie": ["a=1", 2], "z": "a\u0001b" } }
            ] } } }"#,
        );
        let found = problems(load(&path, &script(&["API"])).unwrap_err());
        assert_eq!(
            found,
            vec![
                "bindings.API.responses[1].headers.set-cookie[1]: expected a string (or an array \
                 of strings for a header sent more than once), found a number"
                    .to_owned(),
                "bindings.API.responses[1].headers.z: not a valid header value (no control \
                 characters)"
                    .to_owned(),
            ]
        );
        let path = dir.write(
            "ok.jsonc",
            r#"{ "bindings": { "API": { "responses": [
                { "path": "/", "headers": { "set-cookie": ["a=1", "b=2"], "x": "y" } }
            ] } } }"#,
        );
        let spec = load(&path, &script(&["API"])).unwrap();
        assert_eq!(
            spec.bindings["API"].responses[0].headers,
            vec![
                ("set-cookie".to_owned(), "a=1".to_owned()),
                ("set-cookie".to_owned(), "b=2".to_owned()),
                ("x".to_owned(), "y".to_owned()),
            ]
        );
    }

    #[test]
    fn toml_reads_the_same_shape() {
        let dir = Dir::new();
        let path = dir.write(
            "mock.toml",
            "[bindings.API]\nupstream = \"127.0.0.1:9000\"\n\n[[bindings.API.faults]]\ncode = \"dns_error\"\n",
        );
        let spec = load(&path, &script(&["API"])).unwrap();
        assert_eq!(
            spec.bindings["API"].faults,
            vec![Fault::new(FaultCode::DnsError)]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let dir = Dir::new();
        let path = dir.write(
            "wvpc.mock.jsonc",
            r#"{ "bindings": {
                "DB": {},
                "API": {
                  "upstream": "localhost",
                  "colour": "blue",
                  "responses": [ { "status": "200", "bodyy": "x" }, { "path": "/a", "body": "x", "body_file": "y" } ],
                  "dns": { "api.internal": "127.0.0.1", "b.internal": ["nope"] },
                  "faults": [ { "code": "connection_reset" }, { "rate": 150, "code": "dns_error" }, {}, { "latency_ms": -1 } ]
                } } }"#,
        );
        let found = problems(load(&path, &script(&["API"])).unwrap_err());
        let expected = [
            "bindings.API.colour: unknown key",
            "bindings.API.upstream: \"localhost\" is not an IP:PORT address",
            "bindings.API.responses[0].bodyy: unknown key",
            "bindings.API.responses[0].path: missing",
            "bindings.API.responses[0].status: expected a status from 100 to 599, found a string",
            "bindings.API.responses[1].body_file: give either body or body_file",
            "bindings.API.dns.api.internal: expected an array, found a string",
            "bindings.API.dns.b.internal[0]: \"nope\" is not an IP address",
            "bindings.API.faults[0].code: \"connection_reset\" is not a fault code (use one of connection_refused, dns_error, connection_timeout, tls_certificate_error, http_response_incomplete)",
            "bindings.API.faults[1].rate: expected a percentage from 0 to 100, found 150",
            "bindings.API.faults[2]: a fault needs a code",
            "bindings.API.faults[3].latency_ms: expected milliseconds from 0 to 3600000, found -1",
            "bindings.DB: the script's config has no binding \"DB\" in its vpc_services (it declares API)",
        ];
        for want in expected {
            assert!(
                found.iter().any(|p| p.starts_with(want)),
                "missing {want:?} in:\n{}",
                found.join("\n")
            );
        }
        assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
    }

    #[test]
    fn a_fault_entry_of_another_file_is_checked_the_same_way() {
        let entry = serde_json::json!({ "path": "/x/*", "code": "dns_error", "rate": 50 });
        assert_eq!(
            fault_entry(&entry, "[0].faults.API"),
            Ok(Fault {
                rate: 50,
                ..Fault::new(FaultCode::DnsError).on_path("/x/*")
            })
        );
        let entry = serde_json::json!({ "code": "nope", "colour": 1 });
        let problems: Vec<String> = fault_entry(&entry, "[0].faults.API")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "[0].faults.API.colour: unknown key (known keys: method, path, code, latency_ms, rate)",
                "[0].faults.API.code: \"nope\" is not a fault code (use one of connection_refused, \
                 dns_error, connection_timeout, tls_certificate_error, http_response_incomplete)",
            ]
        );
    }

    #[test]
    fn wrong_shapes_and_formats_are_refused() {
        let dir = Dir::new();
        let path = dir.write("m.json", r#"{ "bindings": [], "extra": 1 }"#);
        let found = problems(load(&path, &script(&["API"])).unwrap_err());
        assert_eq!(
            found,
            vec![
                "(top level).extra: unknown key (known keys: bindings)".to_owned(),
                "bindings: expected an object, found an array".to_owned(),
            ]
        );
        let path = dir.write("m.yaml", "bindings: {}");
        assert!(matches!(
            load(&path, &script(&["API"])),
            Err(MockFileError::UnsupportedFormat { .. })
        ));
        let path = dir.write("bad.jsonc", "{ \"bindings\": ");
        assert!(matches!(
            load(&path, &script(&["API"])),
            Err(MockFileError::Config(ConfigError::Syntax { .. }))
        ));
    }
}

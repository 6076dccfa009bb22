//! The cases file of `wvpc test` (`wvpc.test.yaml`; YAML, JSON, JSONC or TOML): a list of
//! request → expected response cases, read and checked like the wrangler config and the mock
//! file — unknown keys refused, every problem at once with its field path — into [`Case`]s.
//!
//! ```yaml
//! - name: a user is served
//!   request: GET /users/1              # or {method, path, headers, body}
//!   expect:
//!     status: 200
//!     headers: { content-type: application/json }   # exact; {contains: …}; null = absent
//!     json: { id: 1 }                  # or body: "…" (exact), body_contains: "…" / ["…"]
//!     requests:                        # what the mocked services received
//!       API: [ { method: GET, path: /users/1, headers: { host: api.internal } } ]
//! - name: the service is down
//!   request: GET /users/1
//!   faults: { API: connection_refused } # or a fault entry of the mock file, or a list of them
//!   expect: { status: 502, body: "ProxyError: connection_refused" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Map, Value};
use wvpc_iris::dev_mock::{Fault, FaultCode};
use wvpc_platform::mock_file;
use wvpc_runtime::{ConfigError, ConfigProblem, ConfigValue};

/// The cases file looked for next to the script's config when none is named, in order.
pub const DEFAULT_CASES_FILES: [&str; 4] = [
    "wvpc.test.yaml",
    "wvpc.test.yml",
    "wvpc.test.jsonc",
    "wvpc.test.json",
];

const CASE_KEYS: &str = "name, request, faults, expect";
const REQUEST_KEYS: &str = "method, path, headers, body";
const EXPECT_KEYS: &str = "status, headers, body, body_contains, json, requests";
const RECEIVED_KEYS: &str = "method, path, headers, body, body_contains, json";

/// One case: a request to the script, the faults its bindings have meanwhile, and what is
/// expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// What the case checks, as reported.
    pub name: String,
    /// What the script receives.
    pub request: CaseRequest,
    /// Per binding, the fault rules that replace the mock's for this case only.
    pub faults: BTreeMap<String, Vec<Fault>>,
    /// What the script's answer and the mocked services must show.
    pub expect: Expect,
}

/// The request a case sends to the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseRequest {
    /// The method (upper-case).
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// What is expected of a case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expect {
    /// The status of the script's answer.
    pub status: Option<u16>,
    /// Headers of the script's answer.
    pub headers: Vec<(String, TextCheck)>,
    /// The body of the script's answer.
    pub body: BodyCheck,
    /// Per binding, what its mocked service received during the case.
    pub requests: BTreeMap<String, ReceivedCheck>,
}

/// A check on one text (a header value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextCheck {
    /// Present with exactly this value.
    Equals(String),
    /// Present, containing this.
    Contains(String),
    /// Absent.
    Absent,
}

/// Checks on a body; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BodyCheck {
    /// Exactly this text.
    pub equals: Option<String>,
    /// Contains each of these.
    pub contains: Vec<String>,
    /// Parses as JSON equal to this.
    pub json: Option<Value>,
}

/// What one binding's mocked service must have received.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceivedCheck {
    /// This many requests.
    Count(usize),
    /// Exactly these requests, in order, each matching its check.
    Requests(Vec<RequestCheck>),
}

/// A check on one request a mocked service received; what is not given is not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestCheck {
    /// The method.
    pub method: Option<String>,
    /// Path and query, `*` matching any run of characters.
    pub path: Option<String>,
    /// Headers.
    pub headers: Vec<(String, TextCheck)>,
    /// The body.
    pub body: BodyCheck,
}

/// The cases file's path: `given`, or the first of [`DEFAULT_CASES_FILES`] next to the
/// script's config (the first name when none exists, so that the error names it).
pub fn path_for(given: Option<&Path>, config_path: &Path) -> PathBuf {
    if let Some(path) = given {
        return path.to_owned();
    }
    let dir = config_path.parent().unwrap_or_else(|| Path::new(""));
    DEFAULT_CASES_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| dir.join(DEFAULT_CASES_FILES[0]))
}

/// Reads and checks the cases file at `path` (`.yaml`/`.yml`, `.json`, `.jsonc` or `.toml`);
/// `bindings` are the script's, which faults and request checks may name.
pub fn load(path: &Path, bindings: &[&str]) -> Result<Vec<Case>, ConfigError> {
    let value = read(path)?;
    let mut check = Checker {
        bindings,
        problems: Vec::new(),
    };
    let cases = check.root(&value);
    if check.problems.is_empty() {
        Ok(cases)
    } else {
        Err(ConfigError::Invalid {
            path: path.into(),
            problems: check.problems,
        })
    }
}

fn read(path: &Path) -> Result<Value, ConfigError> {
    let yaml = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    if !yaml {
        return match ConfigValue::read(path)? {
            Some(raw) => Ok(raw.value),
            None => Err(ConfigError::Invalid {
                path: path.into(),
                problems: vec![ConfigProblem {
                    field: "(file)".into(),
                    message: "unsupported file type (use a .yaml, .yml, .json or .jsonc file)"
                        .into(),
                }],
            }),
        };
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    serde_saphyr::from_str::<Value>(&text).map_err(|err| {
        let (line, column) = err
            .location()
            .map_or((1, 1), |l| (l.line() as usize, l.column() as usize));
        ConfigError::Syntax {
            path: path.into(),
            format: "YAML",
            line,
            column,
            message: yaml_message(&err),
        }
    })
}

/// The parser's message without its source snippet and location (the error carries those).
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let text = err.without_snippet().to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let bare = first
        .rsplit_once(" at line ")
        .map_or(first, |(message, _)| message);
    bare.to_owned()
}

struct Checker<'a> {
    bindings: &'a [&'a str],
    problems: Vec<ConfigProblem>,
}

/// What `value` is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

impl Checker<'_> {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn object<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.problem(field, format!("expected a map, found {}", kind(other)));
                None
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v str> {
        match value {
            Value::String(s) => Some(s),
            other => {
                self.problem(field, format!("expected a string, found {}", kind(other)));
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

    fn root(&mut self, value: &Value) -> Vec<Case> {
        // Field paths start where the list is: `[0].request` or `cases[0].request`.
        let (items, prefix) = match value {
            Value::Array(items) => (items, ""),
            Value::Object(map) => {
                self.unknown_keys(map, "(top level)", "cases");
                match map.get("cases") {
                    Some(Value::Array(items)) => (items, "cases"),
                    Some(other) => {
                        let message = format!("expected a list of cases, found {}", kind(other));
                        self.problem("cases", message);
                        return Vec::new();
                    }
                    None => {
                        self.problem("cases", "missing (a list of cases)");
                        return Vec::new();
                    }
                }
            }
            other => {
                let message = format!(
                    "expected a list of cases (or a map with `cases`), found {}",
                    kind(other)
                );
                self.problem("(top level)", message);
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.problem(
                "(top level)",
                "no cases (add one, e.g. {name: home page, request: GET /, expect: {status: 200}})",
            );
        }
        let mut cases = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("{prefix}[{i}]");
            if let Some(case) = self.case(item, &field) {
                cases.push(case);
            }
            // Reports tell cases apart by name.
            if let Some(name) = item.get("name").and_then(Value::as_str)
                && let Some(first) = names.insert(name.to_owned(), i)
            {
                self.problem(
                    format!("{field}.name"),
                    format!("{name:?} is also the name of case [{first}]"),
                );
            }
        }
        cases
    }

    fn case(&mut self, value: &Value, field: &str) -> Option<Case> {
        let map = self.object(value, field)?;
        self.unknown_keys(map, field, CASE_KEYS);
        let name = match map.get("name") {
            None => {
                self.problem(
                    format!("{field}.name"),
                    "missing (what the case checks, e.g. \"a user is served\")",
                );
                None
            }
            Some(value) => match self.string(value, &format!("{field}.name")) {
                Some(name) if name.trim().is_empty() || name.contains(['\n', '\r']) => {
                    self.problem(format!("{field}.name"), "must be one non-empty line");
                    None
                }
                other => other.map(str::to_owned),
            },
        };
        let request = match map.get("request") {
            None => {
                self.problem(
                    format!("{field}.request"),
                    "missing (e.g. \"GET /users/1\" or {method: POST, path: /users, body: …})",
                );
                None
            }
            Some(value) => self.request(value, &format!("{field}.request")),
        };
        let mut faults = BTreeMap::new();
        if let Some(value) = map.get("faults") {
            let sub = format!("{field}.faults");
            if let Some(entries) = self.object(value, &sub) {
                for (binding, rules) in entries {
                    let at = format!("{sub}.{binding}");
                    self.binding(binding, &at);
                    if let Some(rules) = self.faults(rules, &at) {
                        faults.insert(binding.clone(), rules);
                    }
                }
            }
        }
        let expect = match map.get("expect") {
            None => {
                self.problem(
                    format!("{field}.expect"),
                    "missing (what the script must answer, e.g. {status: 200})",
                );
                None
            }
            Some(value) => self.expect(value, &format!("{field}.expect")),
        };
        Some(Case {
            name: name?,
            request: request?,
            faults,
            expect: expect?,
        })
    }

    fn binding(&mut self, name: &str, field: &str) {
        if !self.bindings.contains(&name) {
            let known = if self.bindings.is_empty() {
                "it declares none".to_owned()
            } else {
                format!("it declares {}", self.bindings.join(", "))
            };
            self.problem(
                field,
                format!(
                    "the script's config has no binding {name:?} in its vpc_services ({known})"
                ),
            );
        }
    }

    fn request(&mut self, value: &Value, field: &str) -> Option<CaseRequest> {
        if let Value::String(line) = value {
            let Some((method, path)) = line.trim().split_once(' ') else {
                self.problem(
                    field,
                    format!("{line:?} is not \"METHOD /path\" (e.g. \"GET /users/1\")"),
                );
                return None;
            };
            let method = self.method_text(method, field);
            let path = self.path_text(path.trim(), field);
            return Some(CaseRequest {
                method: method?,
                path: path?,
                headers: Vec::new(),
                body: Bytes::new(),
            });
        }
        let map = self.object(value, field)?;
        self.unknown_keys(map, field, REQUEST_KEYS);
        let method = match map.get("method") {
            None => Some("GET".to_owned()),
            Some(value) => {
                let sub = format!("{field}.method");
                self.string(value, &sub)
                    .and_then(|text| self.method_text(text, &sub))
            }
        };
        let path = match map.get("path") {
            None => {
                self.problem(
                    format!("{field}.path"),
                    "missing (e.g. \"/users/1?full=1\")",
                );
                None
            }
            Some(value) => {
                let sub = format!("{field}.path");
                self.string(value, &sub)
                    .and_then(|text| self.path_text(text, &sub))
            }
        };
        let mut headers = Vec::new();
        if let Some(value) = map.get("headers") {
            let sub = format!("{field}.headers");
            if let Some(entries) = self.object(value, &sub) {
                for (name, value) in entries {
                    let at = format!("{sub}.{name}");
                    self.header_name(name, &at);
                    if let Some(text) = self.header_value(value, &at) {
                        headers.push((name.clone(), text));
                    }
                }
            }
        }
        let body = match map.get("body") {
            None => Some(Bytes::new()),
            Some(Value::String(text)) => Some(Bytes::from(text.clone())),
            // A JSON body can be written as JSON; it is sent as JSON.
            Some(value @ (Value::Object(_) | Value::Array(_))) => {
                if !headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                Some(Bytes::from(value.to_string()))
            }
            Some(other) => {
                let message = format!(
                    "expected a string (or a JSON map or list), found {}",
                    kind(other)
                );
                self.problem(format!("{field}.body"), message);
                None
            }
        };
        Some(CaseRequest {
            method: method?,
            path: path?,
            headers,
            body: body?,
        })
    }

    fn method_text(&mut self, text: &str, field: &str) -> Option<String> {
        if !text.is_empty() && http::Method::from_bytes(text.as_bytes()).is_ok() {
            Some(text.to_ascii_uppercase())
        } else {
            self.problem(
                field,
                format!("{text:?} is not an HTTP method (e.g. \"GET /users/1\")"),
            );
            None
        }
    }

    fn path_text(&mut self, text: &str, field: &str) -> Option<String> {
        if text.starts_with('/') && http::uri::PathAndQuery::try_from(text).is_ok() {
            Some(text.to_owned())
        } else {
            self.problem(
                field,
                format!("{text:?} is not a path and query starting with / (e.g. \"/users/1\")"),
            );
            None
        }
    }

    fn header_name(&mut self, name: &str, field: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.problem(field, "not a valid header name");
        }
    }

    fn header_value(&mut self, value: &Value, field: &str) -> Option<String> {
        let text = match value {
            Value::String(s) => s.clone(),
            // `x-count: 3` in YAML is a number; it is meant as text.
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                self.problem(field, format!("expected a string, found {}", kind(other)));
                return None;
            }
        };
        if http::HeaderValue::from_str(&text).is_err() {
            self.problem(field, "not a valid header value (no control characters)");
            return None;
        }
        Some(text)
    }

    /// `"connection_refused"`, a fault entry of the mock file, or a list of them.
    fn faults(&mut self, value: &Value, field: &str) -> Option<Vec<Fault>> {
        let codes = || {
            FaultCode::ALL
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match value {
            Value::String(code) => match FaultCode::parse(code) {
                Some(code) => Some(vec![Fault::new(code)]),
                None => {
                    let message = format!("{code:?} is not a fault code (use one of {})", codes());
                    self.problem(field, message);
                    None
                }
            },
            Value::Array(items) => {
                let mut rules = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.fault_rule(item, &format!("{field}[{i}]")) {
                        Some(rule) => rules.push(rule),
                        None => ok = false,
                    }
                }
                ok.then_some(rules)
            }
            Value::Object(_) => self.fault_rule(value, field).map(|rule| vec![rule]),
            other => {
                let message = format!(
                    "expected a fault code ({}), a fault entry {{code, method, path, rate, \
                     latency_ms}} or a list of them, found {}",
                    codes(),
                    kind(other)
                );
                self.problem(field, message);
                None
            }
        }
    }

    fn fault_rule(&mut self, value: &Value, field: &str) -> Option<Fault> {
        if let Value::String(_) = value {
            return self.faults(value, field)?.pop();
        }
        match mock_file::fault_entry(value, field) {
            Ok(rule) => Some(rule),
            Err(problems) => {
                self.problems.extend(problems);
                None
            }
        }
    }

    fn expect(&mut self, value: &Value, field: &str) -> Option<Expect> {
        let map = self.object(value, field)?;
        self.unknown_keys(map, field, EXPECT_KEYS);
        if map.is_empty() {
            self.problem(
                field,
                format!("expects nothing (give at least one of {EXPECT_KEYS})"),
            );
            return None;
        }
        let mut ok = true;
        let mut expect = Expect::default();
        if let Some(value) = map.get("status") {
            match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(n) if (100..=599).contains(&n) => expect.status = Some(n),
                _ => {
                    let found = match value {
                        Value::Number(n) => n.to_string(),
                        other => kind(other).to_owned(),
                    };
                    self.problem(
                        format!("{field}.status"),
                        format!("expected a status from 100 to 599, found {found}"),
                    );
                    ok = false;
                }
            }
        }
        expect.headers = self.header_checks(map, field);
        expect.body = self.body_check(map, field);
        if let Some(value) = map.get("requests") {
            let sub = format!("{field}.requests");
            if let Some(entries) = self.object(value, &sub) {
                for (binding, check) in entries {
                    let at = format!("{sub}.{binding}");
                    self.binding(binding, &at);
                    if let Some(check) = self.received(check, &at) {
                        expect.requests.insert(binding.clone(), check);
                    }
                }
            }
        }
        ok.then_some(expect)
    }

    fn header_checks(&mut self, map: &Map<String, Value>, field: &str) -> Vec<(String, TextCheck)> {
        let mut checks = Vec::new();
        let Some(value) = map.get("headers") else {
            return checks;
        };
        let sub = format!("{field}.headers");
        let Some(entries) = self.object(value, &sub) else {
            return checks;
        };
        for (name, value) in entries {
            let at = format!("{sub}.{name}");
            self.header_name(name, &at);
            let check = match value {
                Value::Null => Some(TextCheck::Absent),
                Value::Object(inner) => {
                    self.unknown_keys(inner, &at, "contains");
                    match inner.get("contains") {
                        Some(text) => self
                            .string(text, &format!("{at}.contains"))
                            .map(|t| TextCheck::Contains(t.to_owned())),
                        None => {
                            self.problem(&at, "expected {contains: \"…\"}");
                            None
                        }
                    }
                }
                other => self.header_value(other, &at).map(TextCheck::Equals),
            };
            if let Some(check) = check {
                checks.push((name.to_ascii_lowercase(), check));
            }
        }
        checks
    }

    fn body_check(&mut self, map: &Map<String, Value>, field: &str) -> BodyCheck {
        let mut check = BodyCheck::default();
        if let Some(value) = map.get("body") {
            check.equals = self
                .string(value, &format!("{field}.body"))
                .map(str::to_owned);
        }
        if let Some(value) = map.get("body_contains") {
            let sub = format!("{field}.body_contains");
            match value {
                Value::String(text) => check.contains.push(text.clone()),
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(text) = self.string(item, &format!("{sub}[{i}]")) {
                            check.contains.push(text.to_owned());
                        }
                    }
                }
                other => {
                    let message = format!(
                        "expected a string or a list of strings, found {}",
                        kind(other)
                    );
                    self.problem(sub, message);
                }
            }
        }
        check.json = map.get("json").cloned();
        check
    }

    fn received(&mut self, value: &Value, field: &str) -> Option<ReceivedCheck> {
        match value {
            Value::Number(n) => match n.as_u64() {
                Some(count) => Some(ReceivedCheck::Count(count as usize)),
                None => {
                    self.problem(field, format!("expected a count of requests, found {n}"));
                    None
                }
            },
            Value::Array(items) => {
                let mut checks = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{field}[{i}]");
                    let Some(map) = self.object(item, &at) else {
                        continue;
                    };
                    self.unknown_keys(map, &at, RECEIVED_KEYS);
                    let mut check = RequestCheck::default();
                    if let Some(value) = map.get("method") {
                        let sub = format!("{at}.method");
                        check.method = self
                            .string(value, &sub)
                            .and_then(|text| self.method_text(text, &sub));
                    }
                    if let Some(value) = map.get("path") {
                        let sub = format!("{at}.path");
                        if let Some(text) = self.string(value, &sub) {
                            if text.starts_with('/') || text.starts_with('*') {
                                check.path = Some(text.to_owned());
                            } else {
                                self.problem(
                                    sub,
                                    format!("{text:?} must start with / or * (e.g. \"/users/*\")"),
                                );
                            }
                        }
                    }
                    check.headers = self.header_checks(map, &at);
                    check.body = self.body_check(map, &at);
                    checks.push(check);
                }
                Some(ReceivedCheck::Requests(checks))
            }
            other => {
                let message = format!(
                    "expected a count or a list of requests ({{method, path, headers, body, \
                     body_contains, json}}), found {}",
                    kind(other)
                );
                self.problem(field, message);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    fn problems(err: ConfigError) -> Vec<String> {
        match err {
            ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected problems, got {other}"),
        }
    }

    #[test]
    fn the_yaml_example_reads_into_cases() {
        let dir = Dir::new();
        let path = dir.write(
            "wvpc.test.yaml",
            r#"
- name: a user is served
  request: GET /users/1
  expect:
    status: 200
    headers: { content-type: application/json, x-cache: { contains: hit }, x-debug: null }
    json: { id: 1 }
    requests:
      API: [ { method: GET, path: /users/*, headers: { host: api.internal } } ]
- name: a user is created
  request:
    method: post
    path: /users?notify=1
    headers: { x-count: 3 }
    body: { name: Ada }
  expect: { status: 201, body_contains: [Ada, id], requests: { API: 1 } }
- name: the service is down
  request: GET /users/1
  faults: { API: connection_refused }
  expect: { status: 502, body: "ProxyError: connection_refused" }
- name: the service is slow on one path
  request: GET /slow
  faults:
    API: [ { path: /slow, latency_ms: 1500 }, dns_error ]
  expect: { status: 504 }
"#,
        );
        let cases = load(&path, &["API"]).unwrap();
        assert_eq!(cases.len(), 4);
        assert_eq!(cases[0].request.method, "GET");
        assert_eq!(cases[0].request.path, "/users/1");
        assert_eq!(cases[0].expect.status, Some(200));
        assert_eq!(
            cases[0].expect.headers,
            vec![
                (
                    "content-type".into(),
                    TextCheck::Equals("application/json".into())
                ),
                ("x-cache".into(), TextCheck::Contains("hit".into())),
                ("x-debug".into(), TextCheck::Absent),
            ]
        );
        assert_eq!(
            cases[0].expect.body.json,
            Some(serde_json::json!({"id": 1}))
        );
        let ReceivedCheck::Requests(seen) = &cases[0].expect.requests["API"] else {
            panic!("expected request checks");
        };
        assert_eq!(seen[0].path.as_deref(), Some("/users/*"));
        assert_eq!(
            seen[0].headers,
            vec![("host".into(), TextCheck::Equals("api.internal".into()))]
        );
        let create = &cases[1];
        assert_eq!(create.request.method, "POST");
        assert_eq!(
            create.request.body,
            Bytes::from_static(br#"{"name":"Ada"}"#)
        );
        assert_eq!(
            create.request.headers,
            vec![
                ("x-count".into(), "3".into()),
                ("content-type".into(), "application/json".into())
            ]
        );
        assert_eq!(create.expect.body.contains, vec!["Ada", "id"]);
        assert_eq!(create.expect.requests["API"], ReceivedCheck::Count(1));
        assert_eq!(
            cases[2].faults["API"],
            vec![Fault::new(FaultCode::ConnectionRefused)]
        );
        assert_eq!(
            cases[3].faults["API"],
            vec![
                Fault::latency(Duration::from_millis(1500)).on_path("/slow"),
                Fault::new(FaultCode::DnsError)
            ]
        );
    }

    #[test]
    fn json_with_a_cases_key_reads_the_same() {
        let dir = Dir::new();
        let path = dir.write(
            "wvpc.test.jsonc",
            r#"{ "cases": [ // comments are fine
                 { "name": "home", "request": "GET /", "expect": { "status": 200 } } ] }"#,
        );
        let cases = load(&path, &["API"]).unwrap();
        assert_eq!(cases[0].name, "home");
        assert!(cases[0].faults.is_empty());
        let path = dir.write(
            "t.json",
            r#"{ "cases": [ { "name": "home", "request": "GET /", "expect": { "status": 0 } } ] }"#,
        );
        assert_eq!(
            problems(load(&path, &["API"]).unwrap_err()),
            ["cases[0].expect.status: expected a status from 100 to 599, found 0"]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let dir = Dir::new();
        let path = dir.write(
            "wvpc.test.yaml",
            r#"
- name: one
  request: FETCH
  expect: { status: 700, colour: blue }
- request: { path: users, body: 3, verb: GET }
  faults: { DB: connection_refused, API: connection_reset }
  expect: {}
- name: one
  request: GET /
  faults: { API: { code: dns_error, rate: 150 } }
  expect:
    headers: { x-a: { has: b } }
    body_contains: 3
    requests: { API: [ { path: nope, header: {} } ], DB: 1 }
- 7
"#,
        );
        let found = problems(load(&path, &["API"]).unwrap_err());
        let expected = [
            "[0].request: \"FETCH\" is not \"METHOD /path\"",
            "[0].expect.colour: unknown key (known keys: status, headers, body, body_contains, json, requests)",
            "[0].expect.status: expected a status from 100 to 599, found 700",
            "[1].request.verb: unknown key",
            "[1].name: missing",
            "[1].request.path: \"users\" is not a path and query starting with /",
            "[1].request.body: expected a string (or a JSON map or list), found a number",
            "[1].faults.API: \"connection_reset\" is not a fault code (use one of connection_refused",
            "[1].faults.DB: the script's config has no binding \"DB\" in its vpc_services (it declares API)",
            "[1].expect: expects nothing",
            "[2].faults.API.rate: expected a percentage from 0 to 100, found 150",
            "[2].expect.headers.x-a.has: unknown key (known keys: contains)",
            "[2].expect.headers.x-a: expected {contains: \"…\"}",
            "[2].expect.body_contains: expected a string or a list of strings, found a number",
            "[2].expect.requests.API[0].header: unknown key",
            "[2].expect.requests.API[0].path: \"nope\" must start with / or *",
            "[2].expect.requests.DB: the script's config has no binding \"DB\"",
            "[2].name: \"one\" is also the name of case [0]",
            "[3]: expected a map, found a number",
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
    fn bad_syntax_and_shapes_are_refused_with_where() {
        let dir = Dir::new();
        let path = dir.write("wvpc.test.yaml", "- name: a\n  request: [GET\n");
        match load(&path, &["API"]).unwrap_err() {
            ConfigError::Syntax { format, line, .. } => {
                assert_eq!(format, "YAML");
                assert!(line >= 2, "line {line}");
            }
            other => panic!("expected a syntax error, got {other}"),
        }
        let path = dir.write("t.json", r#"{ "case": [] }"#);
        assert_eq!(
            problems(load(&path, &["API"]).unwrap_err()),
            [
                "(top level).case: unknown key (known keys: cases)",
                "cases: missing (a list of cases)"
            ]
        );
        let path = dir.write("t.yaml", "[]");
        assert!(
            problems(load(&path, &["API"]).unwrap_err())[0].starts_with("(top level): no cases")
        );
        let path = dir.write("t.txt", "[]");
        assert!(problems(load(&path, &["API"]).unwrap_err())[0].contains("unsupported file type"));
        assert!(matches!(
            load(&dir.0.path().join("missing.yaml"), &["API"]),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn the_default_file_is_found_next_to_the_config() {
        let dir = Dir::new();
        let config = dir.0.path().join("wrangler.jsonc");
        assert_eq!(path_for(None, &config), dir.0.path().join("wvpc.test.yaml"));
        dir.write("wvpc.test.json", "[]");
        assert_eq!(path_for(None, &config), dir.0.path().join("wvpc.test.json"));
        assert_eq!(
            path_for(Some(Path::new("x.yaml")), &config),
            PathBuf::from("x.yaml")
        );
    }
}

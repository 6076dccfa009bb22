//! Runs the [`Case`]s of a cases file against a started script — what `wvpc test` does — and
//! says, per case, every check that failed with what was expected and what came instead.
//!
//! A case's faults replace its bindings' fault rules for that case only; the rules are put
//! back and the recorded requests cleared before the next case.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use wvpc_iris::dev_mock::{RecordedRequest, glob_match};
use wvpc_runtime::{ScriptLine, ScriptOutput, ScriptStream};

use crate::cases::{self, BodyCheck, Case, ReceivedCheck, RequestCheck, TextCheck};
use crate::{RunningScript, Script, TestingError};

/// How long one case may take before it fails as hung (the script's own wall-time limit
/// normally ends it much sooner).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest text quoted in a failure's one-line message (the full text is in `actual`).
const QUOTE_LIMIT: usize = 120;

/// The outcome of a cases file.
#[derive(Debug, Clone)]
pub struct SuiteReport {
    /// The cases file.
    pub file: PathBuf,
    /// The script's name.
    pub script: String,
    /// Every case, in file order.
    pub cases: Vec<CaseOutcome>,
}

impl SuiteReport {
    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed()).count()
    }

    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.failed() == 0
    }

    /// The total time of the cases.
    pub fn duration(&self) -> Duration {
        self.cases.iter().map(|c| c.duration).sum()
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseOutcome {
    /// The case's name.
    pub name: String,
    /// How long the request and the checks took.
    pub duration: Duration,
    /// Every check that failed; empty when the case passed.
    pub failures: Vec<Failure>,
    /// What the script printed during the case, line by line (stderr lines start with
    /// `stderr: `).
    pub output: Vec<String>,
}

impl CaseOutcome {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One check that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What differed, in one line (`status: expected 200, got 502`).
    pub message: String,
    /// What was expected, when it is a value.
    pub expected: Option<String>,
    /// What came instead, in full.
    pub actual: Option<String>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            expected: None,
            actual: None,
        }
    }

    fn values(mut self, expected: impl Into<String>, actual: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self.actual = Some(actual.into());
        self
    }
}

impl Script {
    /// Loads the cases file at `path` (checked against the script's bindings), starts the
    /// script and runs every case in order.
    pub async fn run_cases(self, path: impl AsRef<Path>) -> Result<SuiteReport, TestingError> {
        let path = path.as_ref();
        let config = self.load()?;
        let bindings: Vec<&str> = config
            .vpc_services
            .iter()
            .map(|b| b.binding.as_str())
            .collect();
        let cases = cases::load(path, &bindings).map_err(TestingError::Cases)?;
        let printed = Arc::new(Printed::default());
        let running = self.start_with_output(printed.clone()).await?;
        let mut outcomes = Vec::with_capacity(cases.len());
        for case in &cases {
            let mut outcome = running.run_case(case).await;
            outcome.output = printed.take();
            outcomes.push(outcome);
        }
        Ok(SuiteReport {
            file: path.to_owned(),
            script: config.name,
            cases: outcomes,
        })
    }
}

impl RunningScript {
    /// Sends `case`'s request with its faults in place and checks the answer and what the
    /// mocked services received. The bindings' fault rules are put back afterwards.
    pub async fn run_case(&self, case: &Case) -> CaseOutcome {
        let started = Instant::now();
        let mut failures = Vec::new();
        let mut saved = Vec::new();
        for (binding, rules) in &case.faults {
            match self.replace_faults(binding, rules.clone()) {
                Ok(previous) => saved.push((binding, previous)),
                Err(err) => failures.push(Failure::new(format!("setting the faults: {err}"))),
            }
        }
        self.clear_requests();
        if failures.is_empty() {
            self.check_case(case, &mut failures).await;
        }
        for (binding, previous) in saved {
            if let Err(err) = self.replace_faults(binding, previous) {
                failures.push(Failure::new(format!("restoring the faults: {err}")));
            }
        }
        self.clear_requests();
        CaseOutcome {
            name: case.name.clone(),
            duration: started.elapsed(),
            failures,
            output: Vec::new(),
        }
    }

    async fn check_case(&self, case: &Case, failures: &mut Vec<Failure>) {
        let request = &case.request;
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let asked = async {
            let response = self
                .request(
                    &request.method,
                    &request.path,
                    &headers,
                    request.body.clone(),
                )
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, TestingError>((status, headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(CASE_TIMEOUT, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(err)) => {
                failures.push(Failure::new(format!("the script did not answer: {err}")));
                return;
            }
            Err(_) => {
                failures.push(Failure::new(format!(
                    "the script did not answer within {} s",
                    CASE_TIMEOUT.as_secs()
                )));
                return;
            }
        };
        let expect = &case.expect;
        if let Some(want) = expect.status
            && want != status
        {
            failures.push(
                Failure::new(format!("status: expected {want}, got {status}"))
                    .values(want.to_string(), status.to_string()),
            );
        }
        for (name, check) in &expect.headers {
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().unwrap_or("(not text)"))
                .collect();
            check_text(&format!("header {name}"), check, &values, failures);
        }
        check_body("body", &expect.body, &body, failures);
        for (binding, check) in &expect.requests {
            check_received(binding, check, &self.requests(binding), failures);
        }
    }
}

/// Keeps what the script prints, for the case that is running (cases run one at a time).
#[derive(Default)]
struct Printed(Mutex<Vec<String>>);

impl Printed {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ScriptOutput for Printed {
    fn line(&self, line: ScriptLine<'_>) {
        let text = match line.stream {
            ScriptStream::Stdout => line.text.to_owned(),
            ScriptStream::Stderr => format!("stderr: {}", line.text),
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(text);
    }
}

/// `values` are every value of a header (none: absent).
fn check_text(what: &str, check: &TextCheck, values: &[&str], failures: &mut Vec<Failure>) {
    let got = values.join(", ");
    match (check, values.is_empty()) {
        (TextCheck::Absent, true) => {}
        (TextCheck::Absent, false) => failures.push(
            Failure::new(format!("{what}: expected absent, got {}", quote(&got)))
                .values("(absent)", got),
        ),
        (TextCheck::Equals(want) | TextCheck::Contains(want), true) => failures.push(
            Failure::new(format!(
                "{what}: expected {}, but it is absent",
                quote(want)
            ))
            .values(want.clone(), "(absent)"),
        ),
        (TextCheck::Equals(want), false) => {
            if !values.contains(&want.as_str()) {
                failures.push(
                    Failure::new(format!(
                        "{what}: expected {}, got {}",
                        quote(want),
                        quote(&got)
                    ))
                    .values(want.clone(), got),
                );
            }
        }
        (TextCheck::Contains(want), false) => {
            if !got.contains(want.as_str()) {
                failures.push(
                    Failure::new(format!(
                        "{what}: {} does not contain {}",
                        quote(&got),
                        quote(want)
                    ))
                    .values(format!("contains {want:?}"), got),
                );
            }
        }
    }
}

fn check_body(what: &str, check: &BodyCheck, body: &[u8], failures: &mut Vec<Failure>) {
    let text = String::from_utf8_lossy(body);
    if let Some(want) = &check.equals
        && *want != text
    {
        failures.push(
            Failure::new(format!(
                "{what}: expected {}, got {}",
                quote(want),
                quote(&text)
            ))
            .values(want.clone(), text.clone()),
        );
    }
    for want in &check.contains {
        if !text.contains(want.as_str()) {
            failures.push(
                Failure::new(format!(
                    "{what} did not contain {} (it was {})",
                    quote(want),
                    quote(&text)
                ))
                .values(format!("contains {want:?}"), text.clone()),
            );
        }
    }
    if let Some(want) = &check.json {
        match serde_json::from_slice::<Value>(body) {
            Err(err) => failures.push(
                Failure::new(format!("{what} is not JSON ({err}): {}", quote(&text)))
                    .values(want.to_string(), text.clone()),
            ),
            Ok(got) => {
                if let Some(difference) = json_difference(want, &got, String::new()) {
                    failures.push(
                        Failure::new(format!("{what} JSON differs: {difference}"))
                            .values(want.to_string(), got.to_string()),
                    );
                }
            }
        }
    }
}

fn check_received(
    binding: &str,
    check: &ReceivedCheck,
    received: &[RecordedRequest],
    failures: &mut Vec<Failure>,
) {
    let listed = || {
        if received.is_empty() {
            "none".to_owned()
        } else {
            received
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let want = match check {
        ReceivedCheck::Count(n) => *n,
        ReceivedCheck::Requests(checks) => checks.len(),
    };
    if want != received.len() {
        failures.push(
            Failure::new(format!(
                "{binding} received {} request(s), expected {want}: {}",
                received.len(),
                listed()
            ))
            .values(want.to_string(), listed()),
        );
    }
    let ReceivedCheck::Requests(checks) = check else {
        return;
    };
    for (i, (check, request)) in checks.iter().zip(received).enumerate() {
        check_request(
            &format!("{binding} request [{i}]"),
            check,
            request,
            failures,
        );
    }
}

fn check_request(
    what: &str,
    check: &RequestCheck,
    request: &RecordedRequest,
    failures: &mut Vec<Failure>,
) {
    if let Some(want) = &check.method
        && !want.eq_ignore_ascii_case(&request.method)
    {
        failures.push(
            Failure::new(format!(
                "{what} method: expected {want}, got {}",
                request.method
            ))
            .values(want.clone(), request.method.clone()),
        );
    }
    if let Some(want) = &check.path
        && !glob_match(want, &request.path)
    {
        failures.push(
            Failure::new(format!(
                "{what} path: expected {}, got {}",
                quote(want),
                quote(&request.path)
            ))
            .values(want.clone(), request.path.clone()),
        );
    }
    for (name, check) in &check.headers {
        let values: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        check_text(&format!("{what} header {name}"), check, &values, failures);
    }
    check_body(
        &format!("{what} body"),
        &check.body,
        &request.body,
        failures,
    );
}

/// Where `got` first differs from `want` (`at .user.name: expected "Ada", got "Bob"`), or
/// `None` when they are equal.
fn json_difference(want: &Value, got: &Value, at: String) -> Option<String> {
    let here = || {
        if at.is_empty() {
            ".".to_owned()
        } else {
            at.clone()
        }
    };
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (key, wv) in w {
                let path = format!("{at}.{key}");
                match g.get(key) {
                    None => return Some(format!("at {path}: missing (expected {wv})")),
                    Some(gv) => {
                        if let Some(d) = json_difference(wv, gv, path) {
                            return Some(d);
                        }
                    }
                }
            }
            g.keys()
                .find(|key| !w.contains_key(*key))
                .map(|key| format!("at {at}.{key}: not expected (got {})", g[key]))
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                if let Some(d) = json_difference(wv, gv, format!("{at}[{i}]")) {
                    return Some(d);
                }
            }
            (w.len() != g.len()).then(|| {
                format!(
                    "at {}: expected {} item(s), got {}",
                    here(),
                    w.len(),
                    g.len()
                )
            })
        }
        // 1 and 1.0 are the same number to a JSON reader.
        (Value::Number(w), Value::Number(g)) if w.as_f64() == g.as_f64() => None,
        (w, g) if w == g => None,
        (w, g) => Some(format!("at {}: expected {w}, got {g}", here())),
    }
}

/// `text` quoted, cut at [`QUOTE_LIMIT`] characters.
fn quote(text: &str) -> String {
    if text.chars().count() <= QUOTE_LIMIT {
        return format!("{text:?}");
    }
    let cut: String = text.chars().take(QUOTE_LIMIT).collect();
    format!("{cut:?}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_difference_names_the_first_differing_path() {
        let want = json!({"id": 1, "user": {"name": "Ada", "tags": ["a", "b"]}});
        assert_eq!(json_difference(&want, &want.clone(), String::new()), None);
        let got = json!({"id": 1.0, "user": {"name": "Bob", "tags": ["a", "b"]}});
        assert_eq!(
            json_difference(&want, &got, String::new()).as_deref(),
            Some(r#"at .user.name: expected "Ada", got "Bob""#)
        );
        let got = json!({"id": 1, "user": {"name": "Ada", "tags": ["a"]}, "x": true});
        assert_eq!(
            json_difference(&want, &got, String::new()).as_deref(),
            Some("at .user.tags: expected 2 item(s), got 1")
        );
        let got = json!({"id": 1, "user": {"name": "Ada", "tags": ["a", "b"]}, "x": true});
        assert_eq!(
            json_difference(&want, &got, String::new()).as_deref(),
            Some("at .x: not expected (got true)")
        );
        assert_eq!(
            json_difference(&json!([1]), &json!({"a": 1}), String::new()).as_deref(),
            Some(r#"at .: expected [1], got {"a":1}"#)
        );
    }

    #[test]
    fn header_checks_say_what_differed() {
        let mut failures = Vec::new();
        let equals = TextCheck::Equals("application/json".into());
        check_text(
            "header content-type",
            &equals,
            &["text/plain"],
            &mut failures,
        );
        check_text("header content-type", &equals, &[], &mut failures);
        check_text("header x", &TextCheck::Absent, &["1"], &mut failures);
        check_text(
            "header x",
            &TextCheck::Contains("b".into()),
            &["a", "b"],
            &mut failures,
        );
        let messages: Vec<&str> = failures.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                r#"header content-type: expected "application/json", got "text/plain""#,
                r#"header content-type: expected "application/json", but it is absent"#,
                r#"header x: expected absent, got "1""#,
            ]
        );
    }
}

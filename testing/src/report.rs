//! A [`SuiteReport`] as CI systems read it: [`tap`] (TAP version 14, a YAML diagnostic block
//! under each failed case) and [`junit`] (JUnit XML: one `testsuite`, a `testcase` per case,
//! a `failure` per failed case).

use std::fmt::Write as _;

use quick_xml::escape::escape;

use crate::suite::{Failure, SuiteReport};

/// TAP version 14: the plan, `ok N - name` / `not ok N - name` per case, and under a failed
/// case a YAML block with its message and every failed check's expected and actual values.
pub fn tap(report: &SuiteReport) -> String {
    let mut out = String::from("TAP version 14\n");
    let _ = writeln!(out, "1..{}", report.cases.len());
    for (i, case) in report.cases.iter().enumerate() {
        let verdict = if case.passed() { "ok" } else { "not ok" };
        let _ = writeln!(out, "{verdict} {} - {}", i + 1, tap_description(&case.name));
        if case.passed() {
            continue;
        }
        out.push_str("  ---\n");
        let _ = writeln!(out, "  message: {}", yaml_string(&summary(&case.failures)));
        out.push_str("  severity: fail\n");
        let _ = writeln!(out, "  duration_ms: {}", case.duration.as_millis());
        out.push_str("  failures:\n");
        for failure in &case.failures {
            let _ = writeln!(out, "    - message: {}", yaml_string(&failure.message));
            if let Some(expected) = &failure.expected {
                let _ = writeln!(out, "      expected: {}", yaml_string(expected));
            }
            if let Some(actual) = &failure.actual {
                let _ = writeln!(out, "      actual: {}", yaml_string(actual));
            }
        }
        if !case.output.is_empty() {
            out.push_str("  output:\n");
            for line in &case.output {
                let _ = writeln!(out, "    - {}", yaml_string(line));
            }
        }
        out.push_str("  ...\n");
    }
    let _ = writeln!(
        out,
        "# {} passed, {} failed ({})",
        report.cases.len() - report.failed(),
        report.failed(),
        report.file.display()
    );
    out
}

/// JUnit XML: `testsuites` > `testsuite` (named after the cases file) > `testcase` per case
/// (class name: the script's name), with a `failure` whose message is the first failed check
/// and whose text lists every one with its expected and actual values.
pub fn junit(report: &SuiteReport) -> String {
    let suite = xml(&report.file.display().to_string());
    let (tests, failures) = (report.cases.len(), report.failed());
    let time = seconds(report.duration());
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"wvpc test\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" \
         time=\"{time}\">"
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{suite}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" \
         skipped=\"0\" time=\"{time}\">"
    );
    let class = xml(&report.script);
    for case in &report.cases {
        let _ = write!(
            out,
            "    <testcase name=\"{}\" classname=\"{class}\" time=\"{}\"",
            xml(&case.name),
            seconds(case.duration)
        );
        if case.passed() {
            out.push_str("/>\n");
            continue;
        }
        out.push_str(">\n");
        let mut details = String::new();
        for failure in &case.failures {
            let _ = writeln!(details, "{}", failure.message);
            if let Some(expected) = &failure.expected {
                let _ = writeln!(details, "  expected: {expected}");
            }
            if let Some(actual) = &failure.actual {
                let _ = writeln!(details, "  actual: {actual}");
            }
        }
        let _ = writeln!(
            out,
            "      <failure message=\"{}\" type=\"assertion\">{}</failure>",
            xml(&summary(&case.failures)),
            xml_text(&details)
        );
        if !case.output.is_empty() {
            let _ = writeln!(
                out,
                "      <system-out>{}</system-out>",
                xml_text(&(case.output.join("\n") + "\n"))
            );
        }
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The first failure's message, and how many more there are.
fn summary(failures: &[Failure]) -> String {
    match failures {
        [] => String::new(),
        [one] => one.message.clone(),
        [first, rest @ ..] => format!("{} (and {} more)", first.message, rest.len()),
    }
}

/// A case name on a TAP test line: `#` would start a directive and `\` escapes, so both are
/// escaped.
fn tap_description(name: &str) -> String {
    name.replace('\\', "\\\\").replace('#', "\\#")
}

/// A YAML scalar: a JSON string is a valid YAML double-quoted scalar, and escapes every
/// control character.
fn yaml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Text escaped for an XML attribute value: as [`xml_text`], and line breaks and tabs as
/// character references (a parser normalizes literal ones in attributes to spaces).
fn xml(text: &str) -> String {
    xml_text(text)
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

/// Text escaped for XML element content; characters XML 1.0 cannot carry at all (most control
/// characters) become U+FFFD.
fn xml_text(text: &str) -> String {
    let allowed: String = text
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' => c,
            c if c >= '\u{10000}' => c,
            _ => '\u{FFFD}',
        })
        .collect();
    escape(allowed.as_str()).into_owned()
}

fn seconds(duration: std::time::Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::CaseOutcome;
    use std::time::Duration;

    fn report() -> SuiteReport {
        SuiteReport {
            file: "wvpc.test.yaml".into(),
            script: "shop <&>".into(),
            cases: vec![
                CaseOutcome {
                    name: "home # page".into(),
                    duration: Duration::from_millis(5),
                    failures: Vec::new(),
                    output: vec!["not shown: the case passed".into()],
                },
                CaseOutcome {
                    name: "a \"quoted\" <case> & more".into(),
                    duration: Duration::from_millis(12),
                    failures: vec![
                        Failure {
                            message: "status: expected 200, got 502".into(),
                            expected: Some("200".into()),
                            actual: Some("502".into()),
                        },
                        Failure {
                            message: "body did not contain \"ok\"".into(),
                            expected: Some("contains \"ok\"".into()),
                            actual: Some("line1\nline2 </failure> \u{1} ]]>".into()),
                        },
                    ],
                    output: vec!["GET / -> 502".into(), "stderr: oops".into()],
                },
            ],
        }
    }

    #[test]
    fn tap_has_the_plan_the_verdicts_and_a_diagnostic_block() {
        let text = tap(&report());
        let expected = "TAP version 14\n\
            1..2\n\
            ok 1 - home \\# page\n\
            not ok 2 - a \"quoted\" <case> & more\n  \
              ---\n  \
              message: \"status: expected 200, got 502 (and 1 more)\"\n  \
              severity: fail\n  \
              duration_ms: 12\n  \
              failures:\n    \
                - message: \"status: expected 200, got 502\"\n      \
                  expected: \"200\"\n      \
                  actual: \"502\"\n    \
                - message: \"body did not contain \\\"ok\\\"\"\n      \
                  expected: \"contains \\\"ok\\\"\"\n      \
                  actual: \"line1\\nline2 </failure> \\u0001 ]]>\"\n  \
              output:\n    \
                - \"GET / -> 502\"\n    \
                - \"stderr: oops\"\n  \
              ...\n\
            # 1 passed, 1 failed (wvpc.test.yaml)\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn junit_escapes_names_messages_and_control_characters() {
        let text = junit(&report());
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
        assert!(
            text.contains("<testsuite name=\"wvpc.test.yaml\" tests=\"2\" failures=\"1\""),
            "{text}"
        );
        assert!(
            text.contains(
                "<testcase name=\"home # page\" classname=\"shop &lt;&amp;&gt;\" time=\"0.005\"/>"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "<testcase name=\"a &quot;quoted&quot; &lt;case&gt; &amp; more\" \
                 classname=\"shop &lt;&amp;&gt;\" time=\"0.012\">"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "<failure message=\"status: expected 200, got 502 (and 1 more)\" \
                 type=\"assertion\">status: expected 200, got 502\n  expected: 200\n"
            ),
            "{text}"
        );
        // The body's markup and its control character cannot end the element or break the
        // document.
        assert!(
            text.contains("actual: line1\nline2 &lt;/failure&gt; \u{FFFD} ]]&gt;\n</failure>"),
            "{text}"
        );
        assert!(
            text.contains(
                "<system-out>GET / -&gt; 502\nstderr: oops\n</system-out>\n    </testcase>"
            ),
            "{text}"
        );
        assert!(!text.contains("not shown"));
        assert!(text.ends_with("  </testsuite>\n</testsuites>\n"));
        assert_eq!(text.matches("<failure ").count(), 1);
    }
}

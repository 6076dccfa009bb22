//! Script routes: the wrangler `routes` of an upload (`"api.example.com/*"`,
//! `{pattern, zone_name}`, `{pattern, custom_domain: true}`), checked and normalized here, and
//! the conflicts found when storing them (a pattern belongs to one script across all
//! accounts).
//!
//! A pattern is `host[/path]`, as Cloudflare writes them:
//! - the host is required, without scheme, port or credentials; it may start with `*`
//!   (`*.example.com` matches subdomains, `*example.com` also the apex); it is lowercased and
//!   a trailing `.` dropped;
//! - the path starts with `/`, may end with `*` (a prefix match) and has no query or fragment;
//!   `*` appears nowhere else;
//! - a pattern without a path (`example.com`) matches only the root: it is stored as
//!   `example.com/`;
//! - a custom domain (`custom_domain: true`) is a bare hostname and serves every path of it:
//!   it is stored as `host/*`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest hostname in a pattern (DNS limit for the text form).
const MAX_HOST_LEN: usize = 253;

/// Most routes one script may have.
pub const MAX_ROUTES_PER_SCRIPT: usize = 1000;

/// A route of a script, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRoute {
    /// The normalized pattern (see the module docs).
    pub pattern: String,
    /// The zone the route was declared in (`zone_name`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_name: Option<String>,
    /// Whether it was declared as a custom domain (the whole host).
    #[serde(default)]
    pub custom_domain: bool,
}

/// A pattern of an upload that another script holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    /// Index in the upload's `routes`.
    pub index: usize,
    /// The normalized pattern.
    pub pattern: String,
    /// The script holding it when it is in the same account; `None` for another account's.
    pub holder: Option<String>,
}

impl fmt::Display for RouteConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metadata.routes[{}].pattern: {:?} is already routed to ",
            self.index, self.pattern
        )?;
        match &self.holder {
            Some(script) => write!(
                f,
                "script {script:?} of this account; remove it from that script's routes (or \
                 delete it) first"
            ),
            None => f.write_str("a script of another account; pick another pattern"),
        }
    }
}

/// The normalized form of `pattern`, or what is wrong with it.
pub fn normalize_pattern(pattern: &str, custom_domain: bool) -> Result<String, String> {
    const EXAMPLE: &str = "e.g. \"api.example.com/*\"";
    if pattern.is_empty() {
        return Err(format!("is empty; give host/path, {EXAMPLE}"));
    }
    if let Some((scheme, _)) = pattern.split_once("://") {
        return Err(format!(
            "{pattern:?} has a scheme ({scheme}://); a route pattern is host/path without a \
             scheme, {EXAMPLE}"
        ));
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{pattern:?} contains whitespace"));
    }
    let (host, path) = match pattern.find('/') {
        Some(at) => (&pattern[..at], Some(&pattern[at..])),
        None => (pattern, None),
    };
    let host = normalize_host(pattern, host)?;
    if custom_domain {
        if host.starts_with('*') || path.is_some() {
            return Err(format!(
                "{pattern:?} is not a hostname; a custom domain is a bare hostname (e.g. \
                 \"shop.example.com\") and serves every path of it"
            ));
        }
        return Ok(format!("{host}/*"));
    }
    let path = path.unwrap_or("/");
    if path.contains(['?', '#']) {
        return Err(format!(
            "{pattern:?} has a query or fragment; a route pattern matches the path only"
        ));
    }
    if path.trim_end_matches('*').contains('*') || path.matches('*').count() > 1 {
        return Err(wildcard_problem(pattern));
    }
    Ok(format!("{host}{path}"))
}

fn wildcard_problem(pattern: &str) -> String {
    format!(
        "{pattern:?} has '*' in the middle; '*' is allowed only at the start of the host \
         (\"*.example.com/*\") and at the end of the path (\"example.com/api/*\")"
    )
}

/// The host of `pattern`, lowercased and without a trailing dot.
fn normalize_host(pattern: &str, host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err(format!(
            "{pattern:?} has no host; a route pattern starts with the host, e.g. \
             \"api.example.com/*\""
        ));
    }
    if host.contains('@') {
        return Err(format!(
            "{pattern:?} has credentials (user@); give the host only"
        ));
    }
    if host.contains(':') {
        return Err(format!(
            "{pattern:?} has a port; route patterns match the host on any port, so leave the \
             port out"
        ));
    }
    let (wildcard, rest) = match host.strip_prefix('*') {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if rest.contains('*') {
        return Err(wildcard_problem(pattern));
    }
    // `*.example.com`: the dot belongs to the wildcard part.
    let name = if wildcard {
        rest.strip_prefix('.').unwrap_or(rest)
    } else {
        rest
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!(
            "{pattern:?} matches every host; name the host (e.g. \"*.example.com/*\")"
        ));
    }
    if let Some(problem) = hostname_problem(&name) {
        return Err(format!("{pattern:?}: the host {problem}"));
    }
    let prefix = match (wildcard, rest.starts_with('.')) {
        (true, true) => "*.",
        (true, false) => "*",
        (false, _) => "",
    };
    Ok(format!("{prefix}{name}"))
}

/// What is wrong with a lowercase hostname, if anything.
fn hostname_problem(name: &str) -> Option<String> {
    if name.len() > MAX_HOST_LEN {
        return Some(format!("is longer than {MAX_HOST_LEN} characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "contains {bad:?}; use letters, digits, '-', '_' and '.' (punycode for other \
             names)"
        ));
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > 63)
    {
        return Some("has an empty label or one longer than 63 characters".into());
    }
    None
}

/// `metadata.routes` of an upload: every problem is pushed as `path: message`.
pub(crate) fn parse_routes(value: Option<&Value>, problems: &mut Vec<String>) -> Vec<ScriptRoute> {
    parse_routes_at("metadata.routes", value, problems)
}

/// Routes given at `field` (`metadata.routes` of an upload, or the body of
/// `PUT …/routes`): every problem is pushed as `path: message`.
pub(crate) fn parse_routes_at(
    field: &str,
    value: Option<&Value>,
    problems: &mut Vec<String>,
) -> Vec<ScriptRoute> {
    let entries = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            problems.push(format!(
                "{field}: expected an array of patterns (\"api.example.com/*\") or \
                 {{pattern, zone_name}} objects"
            ));
            return Vec::new();
        }
    };
    if entries.len() > MAX_ROUTES_PER_SCRIPT {
        problems.push(format!(
            "{field}: {} routes; a script may have at most {MAX_ROUTES_PER_SCRIPT}",
            entries.len()
        ));
        return Vec::new();
    }
    let mut routes: Vec<ScriptRoute> = Vec::new();
    let mut first: std::collections::HashMap<String, usize> = Default::default();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let route = match entry {
            Value::String(pattern) => normalize_pattern(pattern, false)
                .map(|pattern| ScriptRoute {
                    pattern,
                    zone_name: None,
                    custom_domain: false,
                })
                .map_err(|problem| problems.push(format!("{at}: {problem}")))
                .ok(),
            Value::Object(object) => parse_route_object(&at, object, problems),
            _ => {
                problems.push(format!(
                    "{at}: expected a pattern string or a {{pattern, zone_name}} object"
                ));
                None
            }
        };
        let Some(route) = route else { continue };
        if let Some(earlier) = first.get(&route.pattern) {
            problems.push(format!(
                "{at}: {:?} is already given by {field}[{earlier}]",
                route.pattern
            ));
            continue;
        }
        first.insert(route.pattern.clone(), i);
        routes.push(route);
    }
    routes
}

fn parse_route_object(
    at: &str,
    object: &Map<String, Value>,
    problems: &mut Vec<String>,
) -> Option<ScriptRoute> {
    let before = problems.len();
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "pattern" | "zone_name" | "zone_id" | "custom_domain"
        ) {
            problems.push(format!(
                "{at}.{key}: unknown key (allowed: pattern, zone_name, zone_id, custom_domain)"
            ));
        }
    }
    let custom_domain = match object.get("custom_domain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(format!("{at}.custom_domain: expected true or false"));
            false
        }
    };
    let zone_name = match object.get("zone_name") {
        None => None,
        Some(Value::String(zone)) => {
            let zone = zone.strip_suffix('.').unwrap_or(zone).to_ascii_lowercase();
            match hostname_problem(&zone).or_else(|| zone.is_empty().then(|| "is empty".into())) {
                Some(problem) => {
                    problems.push(format!("{at}.zone_name: {zone:?} {problem}"));
                    None
                }
                None => Some(zone),
            }
        }
        Some(_) => {
            problems.push(format!("{at}.zone_name: expected a string"));
            None
        }
    };
    if object.get("zone_id").is_some_and(|z| !z.is_string()) {
        problems.push(format!("{at}.zone_id: expected a string"));
    }
    let pattern = match object.get("pattern") {
        Some(Value::String(pattern)) => match normalize_pattern(pattern, custom_domain) {
            Ok(pattern) => Some(pattern),
            Err(problem) => {
                problems.push(format!("{at}.pattern: {problem}"));
                None
            }
        },
        Some(_) => {
            problems.push(format!("{at}.pattern: expected a string"));
            None
        }
        None => {
            problems.push(format!(
                "{at}.pattern: missing; e.g. {{\"pattern\": \"api.example.com/*\"}}"
            ));
            None
        }
    };
    if let (Some(pattern), Some(zone)) = (&pattern, &zone_name) {
        let host = pattern.split('/').next().unwrap_or_default();
        let bare = host.trim_start_matches('*').trim_start_matches('.');
        if bare != zone && !bare.ends_with(&format!(".{zone}")) {
            problems.push(format!(
                "{at}.pattern: the host {host:?} is not in zone {zone:?} (zone_name)"
            ));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(ScriptRoute {
        pattern: pattern?,
        zone_name,
        custom_domain,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patterns_are_normalized() {
        for (pattern, normalized) in [
            ("api.example.com/*", "api.example.com/*"),
            ("API.Example.COM./v1/*", "api.example.com/v1/*"),
            ("*.example.com/*", "*.example.com/*"),
            ("*example.com/*", "*example.com/*"),
            ("example.com", "example.com/"),
            ("example.com/", "example.com/"),
            ("example.com/exact", "example.com/exact"),
            ("example.com/A/b*", "example.com/A/b*"),
            ("127.0.0.1/*", "127.0.0.1/*"),
        ] {
            assert_eq!(
                normalize_pattern(pattern, false).as_deref(),
                Ok(normalized),
                "{pattern}"
            );
        }
        assert_eq!(
            normalize_pattern("Shop.Example.com", true).as_deref(),
            Ok("shop.example.com/*")
        );
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (pattern, custom, problem) in [
            (
                "",
                false,
                "is empty; give host/path, e.g. \"api.example.com/*\"",
            ),
            (
                "https://example.com/*",
                false,
                "\"https://example.com/*\" has a scheme (https://); a route pattern is host/path \
                 without a scheme, e.g. \"api.example.com/*\"",
            ),
            (
                "/api/*",
                false,
                "\"/api/*\" has no host; a route pattern starts with the host, e.g. \
                 \"api.example.com/*\"",
            ),
            (
                "example.com:8080/*",
                false,
                "\"example.com:8080/*\" has a port; route patterns match the host on any port, \
                 so leave the port out",
            ),
            (
                "api.*.example.com/*",
                false,
                "\"api.*.example.com/*\" has '*' in the middle; '*' is allowed only at the start \
                 of the host (\"*.example.com/*\") and at the end of the path \
                 (\"example.com/api/*\")",
            ),
            (
                "example.com/*/x",
                false,
                "\"example.com/*/x\" has '*' in the middle; '*' is allowed only at the start of \
                 the host (\"*.example.com/*\") and at the end of the path \
                 (\"example.com/api/*\")",
            ),
            (
                "example.com/**",
                false,
                "\"example.com/**\" has '*' in the middle; '*' is allowed only at the start of \
                 the host (\"*.example.com/*\") and at the end of the path \
                 (\"example.com/api/*\")",
            ),
            (
                "example.com/a?b=1",
                false,
                "\"example.com/a?b=1\" has a query or fragment; a route pattern matches the path \
                 only",
            ),
            (
                "*/*",
                false,
                "\"*/*\" matches every host; name the host (e.g. \"*.example.com/*\")",
            ),
            (
                "exa mple.com/*",
                false,
                "\"exa mple.com/*\" contains whitespace",
            ),
            (
                "ex!ample.com/*",
                false,
                "\"ex!ample.com/*\": the host contains '!'; use letters, digits, '-', '_' and \
                 '.' (punycode for other names)",
            ),
            (
                "a..b/*",
                false,
                "\"a..b/*\": the host has an empty label or one longer than 63 characters",
            ),
            (
                "shop.example.com/*",
                true,
                "\"shop.example.com/*\" is not a hostname; a custom domain is a bare hostname \
                 (e.g. \"shop.example.com\") and serves every path of it",
            ),
        ] {
            assert_eq!(
                normalize_pattern(pattern, custom),
                Err(problem.to_owned()),
                "{pattern}"
            );
        }
    }

    #[test]
    fn upload_routes_report_every_problem_with_its_path() {
        let mut problems = Vec::new();
        let routes = parse_routes(
            Some(&json!([
                "api.example.com/*",
                { "pattern": "https://x.example.com/*", "zone_name": "example.com" },
                { "pattern": "shop.example.com", "custom_domain": true },
                { "pattern": "a.other.com/*", "zone_name": "example.com" },
                { "zone_name": "example.com", "colour": 1 },
                "API.example.com/*",
                7,
                { "pattern": "b.example.com/*", "zone_name": "example.com", "zone_id": "z" },
            ])),
            &mut problems,
        );
        assert_eq!(
            routes,
            vec![
                ScriptRoute {
                    pattern: "api.example.com/*".into(),
                    zone_name: None,
                    custom_domain: false
                },
                ScriptRoute {
                    pattern: "shop.example.com/*".into(),
                    zone_name: None,
                    custom_domain: true
                },
                ScriptRoute {
                    pattern: "b.example.com/*".into(),
                    zone_name: Some("example.com".into()),
                    custom_domain: false
                },
            ]
        );
        assert_eq!(
            problems,
            [
                "metadata.routes[1].pattern: \"https://x.example.com/*\" has a scheme (https://); \
                 a route pattern is host/path without a scheme, e.g. \"api.example.com/*\"",
                "metadata.routes[3].pattern: the host \"a.other.com\" is not in zone \
                 \"example.com\" (zone_name)",
                "metadata.routes[4].colour: unknown key (allowed: pattern, zone_name, zone_id, \
                 custom_domain)",
                "metadata.routes[4].pattern: missing; e.g. {\"pattern\": \"api.example.com/*\"}",
                "metadata.routes[5]: \"api.example.com/*\" is already given by \
                 metadata.routes[0]",
                "metadata.routes[6]: expected a pattern string or a {pattern, zone_name} object",
            ]
        );
        let mut problems = Vec::new();
        assert!(parse_routes(Some(&json!("a.com/*")), &mut problems).is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("metadata.routes: expected an array"));
    }

    #[test]
    fn a_conflict_names_the_script_only_within_the_account() {
        let mine = RouteConflict {
            index: 1,
            pattern: "a.com/*".into(),
            holder: Some("other".into()),
        };
        assert_eq!(
            mine.to_string(),
            "metadata.routes[1].pattern: \"a.com/*\" is already routed to script \"other\" of \
             this account; remove it from that script's routes (or delete it) first"
        );
        let theirs = RouteConflict {
            holder: None,
            ..mine
        };
        assert_eq!(
            theirs.to_string(),
            "metadata.routes[1].pattern: \"a.com/*\" is already routed to a script of another \
             account; pick another pattern"
        );
    }
}

//! Which script serves a request: the routing table of a runtime that hosts many scripts
//! ([`RouteTable`]), and wrangler-style route patterns ([`RoutePattern`]).
//!
//! A request is matched by its host (port ignored, case-insensitive, a trailing dot ignored)
//! and its path (query ignored), first match wins:
//! 1. `<script>.<account subdomain>.<workers domain>`, the default host of a script whose
//!    `workers_dev` is on;
//! 2. `<script>.<workers domain>`, when no other account has a script of that name (and the
//!    script's `workers_dev` is on);
//! 3. the scripts' routes, with wrangler's precedence: the most specific host first (an exact
//!    host beats a wildcard; among wildcards the longest suffix), then, among that host's
//!    routes, an exact path before the longest matching path prefix. A route whose path does
//!    not match leaves the request to less specific hosts.
//!
//! Patterns are `host/path`. The host may start with `*`: `*.example.com` matches every
//! subdomain of example.com, `*example.com` matches example.com itself too (and any host that
//! ends in `example.com`: the `*` stands for any text). The path may end with `*` (a prefix);
//! without it the path must match exactly. A pattern without `/` is the host's path `/`.
//! An `http://` or `https://` in front is accepted and ignored: the runtime serves plain
//! HTTP behind whatever terminates TLS.
//!
//! A lookup never scans the routes: exact hosts and wildcard suffixes are hash-map keys, a
//! host tries only the suffix lengths that some wildcard has (longest first), and a host's
//! path prefixes are found the same way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A script of a multi-tenant runtime: its account and its name, unique together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScriptKey {
    /// The owning account's id.
    pub account_id: String,
    /// The script's name.
    pub script: String,
}

impl ScriptKey {
    /// The key of script `script` of account `account_id`.
    pub fn new(account_id: impl Into<String>, script: impl Into<String>) -> Self {
        Self {
            account_id: account_id.into(),
            script: script.into(),
        }
    }
}

impl fmt::Display for ScriptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account_id, self.script)
    }
}

/// A parsed route pattern (`api.example.com/*`, `*.example.com/v1/*`, `example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoutePattern {
    host: HostMatch,
    path: PathMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostMatch {
    Exact(String),
    /// What follows the `*`: `.example.com` for `*.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PathMatch {
    Exact(String),
    /// What precedes the `*`.
    Prefix(String),
}

/// Why a route pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {pattern:?} {reason}")]
pub struct RouteError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it, and what to write instead.
    pub reason: String,
}

impl RoutePattern {
    /// Parses a wrangler route pattern; the error says what is wrong and what to write.
    pub fn parse(pattern: &str) -> Result<RoutePattern, RouteError> {
        let refuse = |reason: &str| RouteError {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        let mut rest = pattern.trim();
        if let Some((scheme, after)) = rest.split_once("://") {
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return Err(refuse(
                    "has a scheme other than http:// or https:// (write host/path, e.g. \
                     api.example.com/*)",
                ));
            }
            rest = after;
        }
        let (host, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err(refuse(
                "has no host (write host/path, e.g. api.example.com/*)",
            ));
        }
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let (wildcard, name) = match host.strip_prefix('*') {
            Some(name) => (true, name),
            None => (false, host.as_str()),
        };
        if name.contains('*') {
            return Err(refuse(
                "has a `*` inside the host; a `*` may only start it (e.g. *.example.com/*)",
            ));
        }
        if name.contains(':') {
            return Err(refuse(
                "has a port; routes match the host name only (remove the :port)",
            ));
        }
        if wildcard && name.trim_matches('.').is_empty() {
            return Err(refuse(
                "matches every host; put a domain after the `*` (e.g. *.example.com/*)",
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(refuse(&format!(
                "has {bad:?} in its host, which a host name cannot contain"
            )));
        }
        if path.contains(['?', '#']) {
            return Err(refuse(
                "has a query or fragment; routes match the path only (remove it)",
            ));
        }
        let path = match path.strip_suffix('*') {
            Some(prefix) => PathMatch::Prefix(prefix.to_owned()),
            None => PathMatch::Exact(path.to_owned()),
        };
        let (PathMatch::Exact(p) | PathMatch::Prefix(p)) = &path;
        if p.contains('*') {
            return Err(refuse(
                "has a `*` inside the path; a `*` may only end it (e.g. example.com/api/*)",
            ));
        }
        let host = if wildcard {
            HostMatch::Suffix(name.to_owned())
        } else {
            HostMatch::Exact(name.to_owned())
        };
        Ok(RoutePattern { host, path })
    }

    /// Whether the pattern matches `host` (lowercase, without port) and `path` (without
    /// query), regardless of other routes.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_matches = match &self.host {
            HostMatch::Exact(h) => host == h,
            HostMatch::Suffix(s) => host.ends_with(s.as_str()),
        };
        host_matches
            && match &self.path {
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            }
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostMatch::Exact(h) => f.write_str(h)?,
            HostMatch::Suffix(s) => write!(f, "*{s}")?,
        }
        match &self.path {
            PathMatch::Exact(p) => f.write_str(p),
            PathMatch::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// What the table needs to know of one script.
#[derive(Debug, Clone, Copy)]
pub struct ScriptRoutes<'a> {
    /// The script.
    pub key: &'a ScriptKey,
    /// Its account's subdomain (`<script>.<subdomain>.<workers domain>`).
    pub subdomain: &'a str,
    /// Whether its default hosts are served.
    pub workers_dev: bool,
    /// Its routes.
    pub routes: &'a [RoutePattern],
}

/// Two scripts claimed the same host or route; the first in [`ScriptKey`] order serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConflict {
    /// The host (`proxy.acme.workers.localhost`) or route pattern claimed twice.
    pub claimed: String,
    /// The script that serves it.
    pub served_by: ScriptKey,
    /// The script whose claim is ignored.
    pub ignored: ScriptKey,
}

/// Routes of one host pattern: exact paths, and path prefixes by length.
#[derive(Debug, Default)]
struct PathRoutes {
    exact: Map<String, usize>,
    prefixes: Map<String, usize>,
    /// Distinct lengths of `prefixes`' keys, longest first.
    prefix_lengths: Vec<usize>,
}

impl PathRoutes {
    fn lookup(&self, path: &str) -> Option<usize> {
        if let Some(&script) = self.exact.get(path) {
            return Some(script);
        }
        self.prefix_lengths
            .iter()
            .filter(|&&len| len <= path.len() && path.is_char_boundary(len))
            .find_map(|&len| self.prefixes.get(&path[..len]).copied())
    }
}

/// The routing table of a set of scripts: immutable, rebuilt whole when the set changes.
#[derive(Debug)]
pub struct RouteTable {
    /// `.<workers domain>`.
    workers_suffix: String,
    /// `<script>.<subdomain>` and unique `<script>`, below the workers domain.
    workers_hosts: Map<String, usize>,
    exact_hosts: Map<String, PathRoutes>,
    wildcard_hosts: Map<String, PathRoutes>,
    /// Distinct lengths of `wildcard_hosts`' keys, longest first.
    wildcard_lengths: Vec<usize>,
    scripts: Vec<ScriptKey>,
    conflicts: Vec<RouteConflict>,
}

impl RouteTable {
    /// Builds the table of `scripts` under `workers_domain` (e.g. `workers.localhost`; case
    /// and surrounding dots do not matter). Deterministic whatever the order of `scripts`:
    /// when two scripts claim the same host or route, the first in [`ScriptKey`] order serves
    /// it and the other claim is listed in [`RouteTable::conflicts`].
    pub fn build<'a>(
        workers_domain: &str,
        scripts: impl IntoIterator<Item = ScriptRoutes<'a>>,
    ) -> RouteTable {
        let mut scripts: Vec<ScriptRoutes<'a>> = scripts.into_iter().collect();
        scripts.sort_by(|a, b| a.key.cmp(b.key));
        let domain = workers_domain.trim_matches('.').to_ascii_lowercase();
        let mut table = RouteTable {
            workers_suffix: format!(".{domain}"),
            workers_hosts: Map::default(),
            exact_hosts: Map::default(),
            wildcard_hosts: Map::default(),
            wildcard_lengths: Vec::new(),
            scripts: scripts.iter().map(|s| s.key.clone()).collect(),
            conflicts: Vec::new(),
        };

        // `<script>.<workers domain>` is served only for a name no other account uses.
        let mut accounts_per_name: Map<String, usize> = Map::default();
        for script in &scripts {
            *accounts_per_name
                .entry(script.key.script.to_ascii_lowercase())
                .or_default() += 1;
        }

        for (index, script) in scripts.iter().enumerate() {
            if script.workers_dev {
                let name = script.key.script.to_ascii_lowercase();
                let default_host = format!("{name}.{}", script.subdomain.to_ascii_lowercase());
                table.claim_workers_host(default_host, index);
                if accounts_per_name[&name] == 1 {
                    table.claim_workers_host(name, index);
                }
            }
            for route in script.routes {
                table.claim_route(route, index);
            }
        }

        let mut lengths: Vec<usize> = table.wildcard_hosts.keys().map(String::len).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        table.wildcard_lengths = lengths;
        for routes in table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.values_mut())
        {
            let mut lengths: Vec<usize> = routes.prefixes.keys().map(String::len).collect();
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            lengths.dedup();
            routes.prefix_lengths = lengths;
        }
        table
    }

    fn claim_workers_host(&mut self, label: String, index: usize) {
        match self.workers_hosts.get(&label) {
            None => {
                self.workers_hosts.insert(label, index);
            }
            Some(&first) if first != index => self.conflicts.push(RouteConflict {
                claimed: format!("{label}{}", self.workers_suffix),
                served_by: self.scripts[first].clone(),
                ignored: self.scripts[index].clone(),
            }),
            Some(_) => {}
        }
    }

    fn claim_route(&mut self, route: &RoutePattern, index: usize) {
        let hosts = match &route.host {
            HostMatch::Exact(h) => self.exact_hosts.entry(h.clone()),
            HostMatch::Suffix(s) => self.wildcard_hosts.entry(s.clone()),
        };
        let paths = hosts.or_default();
        let claims = match &route.path {
            PathMatch::Exact(p) => paths.exact.entry(p.clone()),
            PathMatch::Prefix(p) => paths.prefixes.entry(p.clone()),
        };
        let first = *claims.or_insert(index);
        if first != index {
            self.conflicts.push(RouteConflict {
                claimed: route.to_string(),
                served_by: self.scripts[first].clone(),
                ignored: self.scripts[index].clone(),
            });
        }
    }

    /// The script that serves `host` (without port; case and a trailing dot do not matter)
    /// and `path` (a query is ignored), if any.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&ScriptKey> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let host = host.as_ref();
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let path = if path.is_empty() { "/" } else { path };

        if let Some(label) = host.strip_suffix(self.workers_suffix.as_str())
            && let Some(&index) = self.workers_hosts.get(label)
        {
            return Some(&self.scripts[index]);
        }
        if let Some(index) = self.exact_hosts.get(host).and_then(|r| r.lookup(path)) {
            return Some(&self.scripts[index]);
        }
        self.wildcard_lengths
            .iter()
            .filter(|&&len| len <= host.len() && host.is_char_boundary(host.len() - len))
            .find_map(|&len| {
                self.wildcard_hosts
                    .get(&host[host.len() - len..])
                    .and_then(|routes| routes.lookup(path))
            })
            .map(|index| &self.scripts[index])
    }

    /// Hosts and routes claimed by two scripts (the second claim is ignored).
    pub fn conflicts(&self) -> &[RouteConflict] {
        &self.conflicts
    }

    /// The workers domain, without a leading dot.
    pub fn workers_domain(&self) -> &str {
        &self.workers_suffix[1..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(account: &str, script: &str) -> ScriptKey {
        ScriptKey::new(account, script)
    }

    fn patterns(routes: &[&str]) -> Vec<RoutePattern> {
        routes
            .iter()
            .map(|r| RoutePattern::parse(r).expect("valid pattern"))
            .collect()
    }

    /// A script for [`table`]: account, subdomain, name, workers_dev, routes.
    struct Script {
        key: ScriptKey,
        subdomain: &'static str,
        workers_dev: bool,
        routes: Vec<RoutePattern>,
    }

    fn script(
        account: &str,
        subdomain: &'static str,
        name: &str,
        workers_dev: bool,
        routes: &[&str],
    ) -> Script {
        Script {
            key: key(account, name),
            subdomain,
            workers_dev,
            routes: patterns(routes),
        }
    }

    fn table(scripts: &[Script]) -> RouteTable {
        RouteTable::build(
            "workers.localhost",
            scripts.iter().map(|s| ScriptRoutes {
                key: &s.key,
                subdomain: s.subdomain,
                workers_dev: s.workers_dev,
                routes: &s.routes,
            }),
        )
    }

    /// The script name serving `host` + `path`, or `-`.
    fn served(table: &RouteTable, host: &str, path: &str) -> String {
        table
            .lookup(host, path)
            .map_or_else(|| "-".to_owned(), |k| k.script.clone())
    }

    #[test]
    fn default_hosts_and_the_short_host_of_a_unique_name() {
        let t = table(&[
            script("a1", "acme", "proxy", true, &[]),
            script("a1", "acme", "api", true, &[]),
            script("a2", "beta", "api", true, &[]),
            script("a2", "beta", "hidden", false, &[]),
        ]);
        assert_eq!(served(&t, "proxy.acme.workers.localhost", "/"), "proxy");
        assert_eq!(
            t.lookup("api.beta.workers.localhost", "/x"),
            Some(&key("a2", "api"))
        );
        assert_eq!(
            t.lookup("api.acme.workers.localhost", "/x"),
            Some(&key("a1", "api"))
        );
        // Unique across accounts: the short host works; `api` is in two accounts: it does not.
        assert_eq!(served(&t, "proxy.workers.localhost", "/"), "proxy");
        assert_eq!(served(&t, "api.workers.localhost", "/"), "-");
        // Another account's subdomain does not serve this account's script.
        assert_eq!(served(&t, "proxy.beta.workers.localhost", "/"), "-");
        // workers_dev off: neither default host serves it.
        assert_eq!(served(&t, "hidden.beta.workers.localhost", "/"), "-");
        assert_eq!(served(&t, "hidden.workers.localhost", "/"), "-");
        assert_eq!(served(&t, "workers.localhost", "/"), "-");
        assert_eq!(served(&t, "nope.acme.workers.localhost", "/"), "-");
    }

    #[test]
    fn hosts_ignore_case_a_trailing_dot_and_the_query() {
        let t = table(&[script(
            "a1",
            "acme",
            "Proxy",
            true,
            &["API.Example.com/v1/*"],
        )]);
        assert_eq!(served(&t, "PROXY.Acme.Workers.Localhost.", "/"), "Proxy");
        assert_eq!(served(&t, "api.example.com", "/v1/x?y=1"), "Proxy");
        assert_eq!(served(&t, "api.example.com.", "/v1/"), "Proxy");
        // Paths are case-sensitive, as in wrangler.
        assert_eq!(served(&t, "api.example.com", "/V1/x"), "-");
        // A query never takes part in matching.
        assert_eq!(served(&t, "api.example.com", "/v2?/v1/"), "-");
    }

    #[test]
    fn the_workers_domain_is_configurable() {
        let s = script("a1", "acme", "proxy", true, &[]);
        let t = RouteTable::build(
            ".Workers.Example.",
            [ScriptRoutes {
                key: &s.key,
                subdomain: s.subdomain,
                workers_dev: true,
                routes: &s.routes,
            }],
        );
        assert_eq!(t.workers_domain(), "workers.example");
        assert_eq!(served(&t, "proxy.acme.workers.example", "/"), "proxy");
        assert_eq!(served(&t, "proxy.acme.workers.localhost", "/"), "-");
    }

    #[test]
    fn an_exact_host_beats_a_wildcard_and_the_longest_suffix_wins() {
        let t = table(&[
            script("a", "s", "exact", false, &["api.example.com/*"]),
            script("a", "s", "dot", false, &["*.example.com/*"]),
            script("a", "s", "bare", false, &["*example.com/*"]),
            script("a", "s", "deeper", false, &["*.eu.example.com/*"]),
        ]);
        assert_eq!(served(&t, "api.example.com", "/x"), "exact");
        assert_eq!(served(&t, "www.example.com", "/x"), "dot");
        // `*.example.com` (12 characters of suffix) beats `*example.com` (11)...
        assert_eq!(served(&t, "a.b.example.com", "/"), "dot");
        // ...and only `*example.com` matches the apex, or a host that merely ends with it.
        assert_eq!(served(&t, "example.com", "/"), "bare");
        assert_eq!(served(&t, "myexample.com", "/"), "bare");
        assert_eq!(served(&t, "x.eu.example.com", "/"), "deeper");
        assert_eq!(served(&t, "eu.example.com", "/"), "dot");
        assert_eq!(served(&t, "example.org", "/"), "-");
    }

    #[test]
    fn among_a_hosts_routes_an_exact_path_then_the_longest_prefix() {
        let t = table(&[
            script("a", "s", "root", false, &["example.com/*"]),
            script("a", "s", "api", false, &["example.com/api/*"]),
            script("a", "s", "apiv", false, &["example.com/api/v*"]),
            script("a", "s", "status", false, &["example.com/api/v1/status"]),
            script("a", "s", "home", false, &["example.com"]),
        ]);
        assert_eq!(served(&t, "example.com", "/"), "home");
        assert_eq!(served(&t, "example.com", "/other"), "root");
        assert_eq!(served(&t, "example.com", "/api/"), "api");
        assert_eq!(served(&t, "example.com", "/api/x"), "api");
        // `/api/*` needs the slash: `/api` alone is only under `/*`.
        assert_eq!(served(&t, "example.com", "/api"), "root");
        assert_eq!(served(&t, "example.com", "/api/v2"), "apiv");
        assert_eq!(served(&t, "example.com", "/api/v1/status"), "status");
        // Exact means exact: a longer path falls back to the longest prefix.
        assert_eq!(served(&t, "example.com", "/api/v1/status/x"), "apiv");
        // An empty path (absolute-form without one) is `/`.
        assert_eq!(served(&t, "example.com", ""), "home");
    }

    #[test]
    fn an_exact_path_beats_a_prefix_of_the_same_length() {
        let t = table(&[
            script("a", "s", "prefix", false, &["example.com/api*"]),
            script("a", "s", "exact", false, &["example.com/api"]),
        ]);
        assert_eq!(served(&t, "example.com", "/api"), "exact");
        assert_eq!(served(&t, "example.com", "/apiv2"), "prefix");
    }

    #[test]
    fn a_host_whose_paths_do_not_match_falls_back_to_wider_hosts() {
        let t = table(&[
            script("a", "s", "v1", false, &["api.example.com/v1/*"]),
            script("a", "s", "sub", false, &["*.example.com/*"]),
            script("a", "s", "bare", false, &["*example.com/v2/*"]),
        ]);
        assert_eq!(served(&t, "api.example.com", "/v1/x"), "v1");
        assert_eq!(served(&t, "api.example.com", "/v2/x"), "sub");
        assert_eq!(served(&t, "example.com", "/v2/x"), "bare");
        assert_eq!(served(&t, "example.com", "/v3/x"), "-");
    }

    #[test]
    fn default_hosts_come_before_routes() {
        let t = table(&[
            script("a", "acme", "proxy", true, &[]),
            script("a", "acme", "greedy", false, &["*.workers.localhost/*"]),
        ]);
        assert_eq!(served(&t, "proxy.acme.workers.localhost", "/"), "proxy");
        assert_eq!(served(&t, "other.acme.workers.localhost", "/"), "greedy");
    }

    #[test]
    fn the_same_claim_twice_goes_to_the_first_script_in_key_order() {
        let build = |reversed: bool| {
            let mut scripts = vec![
                script(
                    "b",
                    "beta",
                    "one",
                    true,
                    &["example.com/*", "x.example.com/"],
                ),
                script("a", "acme", "one", true, &["example.com/*"]),
                script("a", "acme", "two", true, &["x.example.com"]),
            ];
            if reversed {
                scripts.reverse();
            }
            table(&scripts)
        };
        for t in [build(false), build(true)] {
            assert_eq!(t.lookup("example.com", "/x"), Some(&key("a", "one")));
            assert_eq!(t.lookup("x.example.com", "/"), Some(&key("a", "two")));
            assert_eq!(
                t.conflicts(),
                [
                    RouteConflict {
                        claimed: "example.com/*".into(),
                        served_by: key("a", "one"),
                        ignored: key("b", "one"),
                    },
                    RouteConflict {
                        claimed: "x.example.com/".into(),
                        served_by: key("a", "two"),
                        ignored: key("b", "one"),
                    },
                ]
            );
        }
    }

    #[test]
    fn patterns_parse_like_wrangler_and_bad_ones_say_why() {
        let shown = |p: &str| RoutePattern::parse(p).map(|r| r.to_string());
        assert_eq!(shown("api.example.com/*").unwrap(), "api.example.com/*");
        assert_eq!(shown("Example.COM").unwrap(), "example.com/");
        assert_eq!(shown("https://example.com/a*").unwrap(), "example.com/a*");
        assert_eq!(shown("*example.com/*").unwrap(), "*example.com/*");
        assert_eq!(shown(" *.example.com./x ").unwrap(), "*.example.com/x");
        let refused = |p: &str| RoutePattern::parse(p).unwrap_err().to_string();
        assert_eq!(
            refused("/api/*"),
            "route \"/api/*\" has no host (write host/path, e.g. api.example.com/*)"
        );
        assert_eq!(
            refused("api.*.example.com/*"),
            "route \"api.*.example.com/*\" has a `*` inside the host; a `*` may only start it \
             (e.g. *.example.com/*)"
        );
        assert_eq!(
            refused("example.com:8080/*"),
            "route \"example.com:8080/*\" has a port; routes match the host name only (remove \
             the :port)"
        );
        assert_eq!(
            refused("*/*"),
            "route \"*/*\" matches every host; put a domain after the `*` (e.g. \
             *.example.com/*)"
        );
        assert_eq!(
            refused("example.com/*/x"),
            "route \"example.com/*/x\" has a `*` inside the path; a `*` may only end it (e.g. \
             example.com/api/*)"
        );
        assert_eq!(
            refused("example.com/a?b=1"),
            "route \"example.com/a?b=1\" has a query or fragment; routes match the path only \
             (remove it)"
        );
        assert_eq!(
            refused("ftp://example.com/*"),
            "route \"ftp://example.com/*\" has a scheme other than http:// or https:// (write \
             host/path, e.g. api.example.com/*)"
        );
        assert_eq!(
            refused("exa mple.com/*"),
            "route \"exa mple.com/*\" has ' ' in its host, which a host name cannot contain"
        );
    }

    /// Every pattern that matches, most specific first (wrangler's order, by brute force).
    fn reference<'s>(scripts: &'s [Script], host: &str, path: &str) -> Option<&'s ScriptKey> {
        let rank = |route: &RoutePattern| {
            let host = match &route.host {
                HostMatch::Exact(h) => (1, h.len()),
                HostMatch::Suffix(s) => (0, s.len()),
            };
            let path = match &route.path {
                PathMatch::Exact(p) => (1, p.len()),
                PathMatch::Prefix(p) => (0, p.len()),
            };
            (host, path)
        };
        scripts
            .iter()
            .flat_map(|s| s.routes.iter().map(move |r| (r, &s.key)))
            .filter(|(route, _)| route.matches(host, path))
            .max_by_key(|(route, _)| rank(route))
            .map(|(_, key)| key)
    }

    #[test]
    fn ten_thousand_routes_match_like_a_scan_of_all_of_them() {
        // 2 500 scripts × 4 routes: tenant domains with exact hosts, subdomain and bare
        // wildcards, shared hosts with many path prefixes, and exact paths.
        let scripts: Vec<Script> = (0..2500)
            .map(|i| {
                let routes = [
                    format!("tenant{i}.example.com/*"),
                    format!("*.tenant{}.example.com/api/*", i % 700),
                    format!("*tenant{}.net/v{}*", i % 300, i % 7),
                    format!("shared{}.example.com/t/{i}/*", i % 50),
                ];
                Script {
                    key: key(&format!("acct{}", i % 97), &format!("s{i}")),
                    subdomain: "sub",
                    workers_dev: false,
                    routes: routes
                        .iter()
                        .map(|r| RoutePattern::parse(r).unwrap())
                        .collect(),
                }
            })
            .collect();
        // Patterns claimed twice (the `*.tenantN` ones) make the reference ambiguous: drop the
        // later claims from it as the table does.
        let t = table(&scripts);
        let mut claimed = std::collections::HashSet::new();
        let mut sorted: Vec<&Script> = scripts.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let deduped: Vec<Script> = sorted
            .into_iter()
            .map(|s| Script {
                key: s.key.clone(),
                subdomain: s.subdomain,
                workers_dev: false,
                routes: s
                    .routes
                    .iter()
                    .filter(|r| claimed.insert((*r).clone()))
                    .cloned()
                    .collect(),
            })
            .collect();
        assert_eq!(
            t.conflicts().len(),
            10_000 - deduped.iter().map(|s| s.routes.len()).sum::<usize>()
        );

        let mut probes = Vec::new();
        for i in (0..2600).step_by(7) {
            probes.push((format!("tenant{i}.example.com"), "/x".to_owned()));
            probes.push((format!("www.tenant{i}.example.com"), "/api/v1".to_owned()));
            probes.push((format!("www.tenant{i}.example.com"), "/other".to_owned()));
            probes.push((format!("tenant{}.net", i % 400), format!("/v{}/x", i % 9)));
            probes.push((format!("mytenant{}.net", i % 400), format!("/v{}", i % 9)));
            probes.push((format!("shared{}.example.com", i % 60), format!("/t/{i}/a")));
            probes.push((format!("shared{}.example.com", i % 60), format!("/t/{i}")));
        }
        let mut matched = 0;
        for (host, path) in &probes {
            let expected = reference(&deduped, host, path);
            assert_eq!(t.lookup(host, path), expected, "{host}{path}");
            matched += usize::from(expected.is_some());
        }
        // The probes exercise both outcomes.
        assert!(
            matched > probes.len() / 4 && matched < probes.len(),
            "{matched}"
        );
    }
}

//! The sample Grafana dashboard (docs/grafana/workers-vpc.json) is one an operator can
//! import: valid JSON with panels, querying only metrics docs/operations.md lists. (That
//! every metric the processes serve is listed there is checked where they serve it, in the
//! platform test's promtool scenario.)

use std::collections::BTreeSet;
use std::path::Path;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_grafana_dashboard_queries_only_documented_metrics() {
    let dashboard = repo_file("docs/grafana/workers-vpc.json");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = parsed["panels"]
        .as_array()
        .expect("the dashboard has panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array();
        assert!(
            targets.is_some_and(|t| t.iter().all(|t| t["expr"].as_str().is_some())),
            "a panel without queries: {panel}"
        );
    }
    let mut queried = BTreeSet::new();
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("wvpc_") {
            // A histogram is documented by its family name.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word);
            queried.insert(family.to_owned());
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");
    let docs = repo_file("docs/operations.md");
    let unknown: Vec<&String> = queried
        .iter()
        .filter(|name| !docs.contains(&format!("`{name}")))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics docs/operations.md does not list: {unknown:?}"
    );
}

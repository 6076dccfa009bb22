//! The real wrangler (`$WRANGLER`, installed by `scripts/install-wrangler`) deploys a
//! JavaScript script with `vpc_services` and `vpc_networks` bindings to the platform's
//! directory API, and the
//! runtime serves it: the origin behind the tunnel answers through the binding. A second
//! deploy of the changed script takes wrangler's other path (a version upload, then a
//! deployment) and the runtime serves the new version.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::*;

/// `$WRANGLER deploy` in `project` against the platform's API; its stdout, or a panic with
/// what it printed. Telemetry, error reports and the update check are off and its home is
/// the project, so that it reads no user config and calls nothing but loopback.
async fn wrangler_deploy(wrangler: &Path, project: &Path, platform: &Platform) -> String {
    let account = platform.directory().account_id().to_owned();
    let mut command = Command::new(wrangler);
    command
        .arg("deploy")
        .current_dir(project)
        .env(
            "CLOUDFLARE_API_BASE_URL",
            format!("http://{}/client/v4", platform.directory.addr(0)),
        )
        .env("CLOUDFLARE_API_TOKEN", &platform.token)
        .env("CLOUDFLARE_ACCOUNT_ID", account)
        .env("WRANGLER_SEND_METRICS", "false")
        .env("WRANGLER_SEND_ERROR_REPORTS", "false")
        // The banner's update check asks npm's registry; warnings may ask it too: point it
        // at a loopback port where nothing listens.
        .env("WRANGLER_HIDE_BANNER", "true")
        .env("npm_config_registry", "http://127.0.0.1:9/")
        .env("HOME", project.join(".home"))
        .env("XDG_CONFIG_HOME", project.join(".home"))
        .env("CI", "true")
        .env("NO_COLOR", "1")
        .env_remove("CLOUDFLARE_API_KEY")
        .env_remove("CLOUDFLARE_EMAIL")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A hang guard only: the first JavaScript build installs its npm toolchain.
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("wrangler deploy hung")
        .expect("running $WRANGLER");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wrangler deploy failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn write_script(project: &Path, prefix: &str) {
    std::fs::write(
        project.join("src/index.js"),
        format!(
            "export default {{\n  async fetch(request, env) {{\n    \
             const url = new URL(request.url);\n    \
             return env.API.fetch(`http://api.internal{prefix}${{url.pathname}}${{url.search}}`);\n  \
             }},\n}};\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrangler_deploys_a_javascript_script_that_the_runtime_serves_through_its_binding() {
    let Some(wrangler) = std::env::var_os("WRANGLER").filter(|w| !w.is_empty()) else {
        println!("SKIPPED (WRANGLER): not set (WRANGLER=$(scripts/install-wrangler))");
        return;
    };
    if !wvpc_tests::guests::javascript_builds() {
        return;
    }
    let wrangler = std::path::PathBuf::from(wrangler);
    let net = PrivateNetwork::start(&[("api.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let (office, service) =
        tunnel_and_service(&platform.directory(), "office", "api", "api.internal", &net);
    let _connector = connector(&platform, &office).await;

    let project = TempDir::new("wrangler-project");
    std::fs::create_dir_all(project.path().join("src")).unwrap();
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        format!(
            r#"// A module worker with a VPC service binding, as a Workers developer writes it.
{{
  "name": "hello-js",
  "main": "src/index.js",
  "compatibility_date": "2025-01-01",
  "vpc_services": [{{ "binding": "API", "service_id": "{service}" }}],
  "vpc_networks": [{{ "binding": "NET", "network_id": "cf1:network" }}]
}}"#
        ),
    )
    .unwrap();
    write_script(project.path(), "");

    let first = wrangler_deploy(&wrangler, project.path(), &platform).await;
    assert!(first.contains("Uploaded hello-js"), "{first}");
    assert!(first.contains("hello-js.local.workers.dev"), "{first}");
    assert!(first.contains("Current Version ID: "), "{first}");
    assert!(!first.contains("Current Version ID: undefined"), "{first}");
    let host = "hello-js.local.workers.localhost";
    let reply = platform.until_served(host, "/hello?from=wrangler").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /hello?from=wrangler");
    net.origin("api.internal")
        .wait_seen("/hello?from=wrangler")
        .await;

    // Deployed again, changed: a version upload and a deployment, then served.
    write_script(project.path(), "/v2");
    let second = wrangler_deploy(&wrangler, project.path(), &platform).await;
    assert!(second.contains("Uploaded hello-js"), "{second}");
    let reply = platform
        .until_built(host, "/hello", 200, "hello from origin: /v2/hello")
        .await;
    assert_eq!(reply.text(), "hello from origin: /v2/hello");
    let versions = platform.directory().script_versions("hello-js").unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions[0].active && versions[0].number == 2);
    let bindings: Vec<(&str, &str)> = versions[0]
        .bindings
        .iter()
        .map(|b| (b.name.as_str(), b.binding_type.as_str()))
        .collect();
    assert_eq!(bindings, [("API", "vpc_service"), ("NET", "vpc_network")]);
}

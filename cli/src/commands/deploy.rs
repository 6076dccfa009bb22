//! `wvpc deploy`: uploads the built script (the `main` wasm of the wrangler config, or its
//! JavaScript `main` built into a component first) with its
//! `vpc_services` and `vpc_networks` (as `vpc_network`) bindings, `routes` (or `route`), `workers_dev` and `limits` to the directory
//! API, which checks the component, verifies every binding against the deploying token, checks
//! the routes, stores a new version and makes it the one served. Refusals name the binding, the
//! service and what is missing, or the route and the script holding it.
//!
//! Bindings that name their service (`{binding, service: "name"}`) are sent by name, so the
//! directory resolves them in the same transaction that checks and stores the script. The
//! runtime's config loader validates `name`, `main`, `vpc_services` and `limits`; `routes`,
//! `route` and `workers_dev` are read from the same file here and checked by the directory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value, json};
use uuid::Uuid;
use wvpc_runtime::ScriptConfig;

use super::dev::find_config;
use crate::remote::{ApiArgs, Remote};

/// The host suffix runtimes serve scripts under unless given `--workers-domain`.
pub const DEFAULT_WORKERS_DOMAIN: &str = "workers.localhost";

/// `wvpc deploy` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// Worker config (wrangler-style JSON, JSONC or TOML) [default: the first of wrangler.jsonc,
    /// wrangler.json, wrangler.toml in the current directory]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the deployed script object as JSON
    #[arg(long)]
    pub json: bool,
    /// The runtimes' --workers-domain, to print the script's default URL with
    #[arg(
        long,
        env = "WVPC_WORKERS_DOMAIN",
        default_value = DEFAULT_WORKERS_DOMAIN,
        value_name = "DOMAIN"
    )]
    pub workers_domain: String,
}

/// Runs `wvpc deploy`.
pub async fn run(
    args: DeployArgs,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let Some(url) = &api.api else {
        anyhow::bail!(
            "wvpc deploy uploads to a directory API: pass --api http://HOST:PORT or set WVPC_API \
             (and the token in WVPC_API_TOKEN)"
        );
    };
    let config_path = find_config(args.config.as_deref(), &std::env::current_dir()?)?;
    // Names stay names: a placeholder id per name, swapped back when the metadata is built.
    let by_name: RefCell<HashMap<Uuid, String>> = RefCell::default();
    let script = ScriptConfig::load_resolving(&config_path, &|name| {
        let placeholder = Uuid::new_v4();
        by_name.borrow_mut().insert(placeholder, name.to_owned());
        Ok(placeholder)
    })?;
    let by_name = by_name.into_inner();
    // A JavaScript main is built here, as wrangler builds before it uploads.
    let component = match script.is_javascript() {
        true => {
            let building = script.clone();
            let wasm = tokio::task::spawn_blocking(move || building.component())
                .await
                .context("building the script")??;
            writeln!(
                out,
                "built {} into a component ({})",
                script.main.display(),
                wasm.display()
            )?;
            wasm
        }
        false => script.main.clone(),
    };
    let module = std::fs::read(&component)
        .with_context(|| format!("reading the script module {}", component.display()))?;
    let main_module = match script.is_javascript() {
        true => script
            .main
            .file_stem()
            .and_then(|n| n.to_str())
            .map_or_else(|| "worker.wasm".to_owned(), |stem| format!("{stem}.wasm")),
        false => script
            .main
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("worker.wasm")
            .to_owned(),
    };
    let bindings: Vec<serde_json::Value> = script
        .vpc_services
        .iter()
        .map(|b| match by_name.get(&b.service_id) {
            Some(name) => json!({ "type": "vpc_service", "name": b.binding, "service": name }),
            None => json!({ "type": "vpc_service", "name": b.binding, "service_id": b.service_id }),
        })
        .chain(script.vpc_networks.iter().map(|b| {
            match (b.network.tunnel_id(), b.network.network_id()) {
                (Some(tunnel), _) => {
                    json!({ "type": "vpc_network", "name": b.binding, "tunnel_id": tunnel })
                }
                (None, network) => {
                    json!({ "type": "vpc_network", "name": b.binding, "network_id": network })
                }
            }
        }))
        .collect();
    let mut metadata = json!({ "main_module": main_module, "bindings": bindings });
    metadata
        .as_object_mut()
        .context("metadata is an object")?
        .extend(deployment_settings(&config_path)?);

    let boundary = format!("wvpc-{}", Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(module.len() + 1024);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"{main_module}\"; filename=\"{main_module}\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&module);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let remote = Remote::connect(url, api.account.as_deref()).await?;
    let response = remote
        .client
        .send(
            Method::PUT,
            &remote.path(&format!("workers/scripts/{}", script.name)),
            Some((
                &format!("multipart/form-data; boundary={boundary}"),
                Bytes::from(body),
            )),
        )
        .await?;
    let (result, _) = wvpc_directory::api::client::unwrap_envelope(&response)
        .with_context(|| format!("deploying script {:?}", script.name))?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }
    let subdomain = remote
        .call(Method::GET, "workers/subdomain", None)
        .await
        .context("reading the account's subdomain")?;
    writeln!(
        out,
        "✅ Deployed script {:?} version {} ({}) to account {}: {} bytes, etag {}",
        script.name,
        result["version_number"],
        result["version_id"].as_str().unwrap_or(""),
        remote.account,
        module.len(),
        result["etag"].as_str().unwrap_or(""),
    )?;
    for binding in result["bindings"].as_array().into_iter().flatten() {
        let name = binding["name"].as_str().unwrap_or("");
        if let Some(tunnel) = binding["tunnel_id"].as_str() {
            writeln!(out, "   binding {name} -> network through tunnel {tunnel}")?;
        } else if let Some(network) = binding["network_id"].as_str() {
            writeln!(out, "   binding {name} -> network {network}")?;
        } else {
            writeln!(
                out,
                "   binding {name} -> VPC service {}",
                binding["service_id"].as_str().unwrap_or("")
            )?;
        }
    }
    if result["workers_dev"] == false {
        writeln!(
            out,
            "   not served on its default host (workers_dev is false)"
        )?;
    } else {
        writeln!(
            out,
            "   served at http://{}.{}.{} ({} is the runtimes' --workers-domain)",
            script.name,
            subdomain["subdomain"].as_str().unwrap_or(""),
            args.workers_domain,
            args.workers_domain
        )?;
    }
    for route in result["routes"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "   served on route {}",
            route["pattern"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

/// `routes` (or wrangler's single `route`), `workers_dev` and `limits` of the config file, as
/// written: the directory checks them and names what is wrong.
fn deployment_settings(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    // The runtime's loader has parsed the same text already: a syntax error cannot get here.
    let raw: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => serde_json::to_value(
            toml::from_str::<toml::Table>(&text)
                .with_context(|| format!("config {}", path.display()))?,
        )?,
        _ => jsonc_parser::parse_to_serde_value::<Value>(&text, &Default::default())
            .map_err(|err| anyhow::anyhow!("config {}: {err}", path.display()))?,
    };
    let mut settings = Map::new();
    let Value::Object(mut root) = raw else {
        return Ok(settings);
    };
    match (root.remove("routes"), root.remove("route")) {
        (Some(_), Some(_)) => anyhow::bail!(
            "config {}: give either route or routes, not both",
            path.display()
        ),
        (Some(routes), None) => {
            settings.insert("routes".into(), routes);
        }
        (None, Some(route)) => {
            settings.insert("routes".into(), Value::Array(vec![route]));
        }
        (None, None) => {}
    }
    for key in ["workers_dev", "limits"] {
        if let Some(value) = root.remove(key) {
            settings.insert(key.into(), value);
        }
    }
    Ok(settings)
}

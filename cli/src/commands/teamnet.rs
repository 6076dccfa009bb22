//! `wvpc vnet create|list|update|delete` and `wvpc route ip add|list|delete`: virtual networks
//! and the IP routes inside them, with cloudflared's verbs (`vnet add`, `route ip show`).
//!
//! Virtual networks and tunnels are named by name or id; a route by its network (within
//! `--vnet`, the default virtual network unless given) or its id. With `--api` (or
//! `WVPC_API`) the commands talk to a directory API instead of the local `--state`; refusals
//! are printed the same way, each problem with the argument or flag it is about.

use std::io::Write;

use anyhow::Context as _;
use uuid::Uuid;
use wvpc_directory::api::client::ClientError;
use wvpc_directory::validation::Problem;
use wvpc_directory::{
    Directory, DirectoryError, RouteFilter, RouteInput, TeamnetRoute, VirtualNetwork,
    VirtualNetworkInput,
};

use crate::remote::{ApiArgs, Remote};
use crate::table;

/// `wvpc vnet …`
#[derive(Debug, clap::Subcommand)]
pub enum VnetCommand {
    /// Create a virtual network
    #[command(visible_alias = "add")]
    Create {
        /// Name, unique in the account
        name: String,
        /// Free-text comment
        #[arg(long, short = 'c')]
        comment: Option<String>,
        /// Make it the account's default virtual network (the one `cf1:network` means)
        #[arg(long, short = 'd')]
        default: bool,
        /// Print the virtual network object as JSON
        #[arg(long)]
        json: bool,
    },
    /// List virtual networks
    #[command(visible_alias = "ls")]
    List {
        /// Print a JSON array of virtual network objects
        #[arg(long)]
        json: bool,
    },
    /// Change a virtual network's name or comment, or make it the default
    Update {
        /// Virtual network name or id
        #[arg(value_name = "NAME|ID")]
        vnet: String,
        /// New name
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// New comment
        #[arg(long, short = 'c')]
        comment: Option<String>,
        /// Make it the account's default virtual network
        #[arg(long, short = 'd')]
        default: bool,
        /// Print the virtual network object as JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a virtual network (refused while routes, scripts or services use it, or while it
    /// is the default)
    #[command(visible_alias = "rm")]
    Delete {
        /// Virtual network name or id
        #[arg(value_name = "NAME|ID")]
        vnet: String,
    },
}

/// `wvpc route …`
#[derive(Debug, clap::Subcommand)]
pub enum RouteCommand {
    /// Routes of private IP networks through tunnels
    #[command(subcommand)]
    Ip(RouteIpCommand),
}

/// `wvpc route ip …`
#[derive(Debug, clap::Subcommand)]
pub enum RouteIpCommand {
    /// Route a network (CIDR) of a virtual network through a tunnel
    #[command(visible_alias = "create")]
    Add {
        /// The network, e.g. 10.0.0.0/24 (no host bits)
        #[arg(value_name = "CIDR")]
        network: String,
        /// Tunnel name or id whose connectors reach the network
        #[arg(value_name = "TUNNEL")]
        tunnel: String,
        /// Virtual network name or id [default: the account's default]
        #[arg(long, value_name = "NAME|ID")]
        vnet: Option<String>,
        /// Free-text comment
        #[arg(long, short = 'c')]
        comment: Option<String>,
        /// Print the route object as JSON
        #[arg(long)]
        json: bool,
    },
    /// List routes
    #[command(visible_alias = "show")]
    List {
        /// Only routes of this virtual network (name or id)
        #[arg(long, value_name = "NAME|ID")]
        vnet: Option<String>,
        /// Only routes through this tunnel (name or id)
        #[arg(long, value_name = "NAME|ID")]
        tunnel: Option<String>,
        /// Print a JSON array of route objects
        #[arg(long)]
        json: bool,
    },
    /// Delete a route, by its network (in --vnet) or its id
    #[command(visible_alias = "rm")]
    Delete {
        /// The routed network (CIDR) or the route id
        #[arg(value_name = "CIDR|ID")]
        route: String,
        /// Virtual network of the CIDR (name or id) [default: the account's default]
        #[arg(long, value_name = "NAME|ID")]
        vnet: Option<String>,
    },
}

/// A virtual network or route refused by the directory's checks, shown with the argument or
/// flag each problem is about.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid {what} ({} problem{}):{}",
    problems.len(),
    if problems.len() == 1 { "" } else { "s" },
    render_problems(problems)
)]
pub struct InvalidInput {
    /// `virtual network` or `route`.
    pub what: &'static str,
    /// What is wrong, by field.
    pub problems: Vec<Problem>,
}

/// Runs a `wvpc vnet` subcommand: against the API when `api` is given, else on the local
/// state.
pub async fn run_vnet(
    command: VnetCommand,
    state: &crate::StateDir,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let backend = Backend::open(state, api).await?;
    match command {
        VnetCommand::Create {
            name,
            comment,
            default,
            json,
        } => {
            let input = VirtualNetworkInput {
                name: Some(name),
                comment,
                is_default: default.then_some(true),
                is_default_network: None,
            };
            let vnet = backend.create_vnet(&input).await?;
            if json {
                return print_json(out, &vnet);
            }
            writeln!(
                out,
                "✅ Created virtual network {:?} ({}){}",
                vnet.name,
                vnet.id,
                if vnet.is_default {
                    ", now the account's default"
                } else {
                    ""
                }
            )?;
        }
        VnetCommand::List { json } => {
            let vnets = backend.vnets().await?;
            if json {
                return print_json(out, &vnets);
            }
            print_vnets(&vnets, out)?;
        }
        VnetCommand::Update {
            vnet,
            name,
            comment,
            default,
            json,
        } => {
            let id = backend.vnet(&vnet).await?.id;
            let input = VirtualNetworkInput {
                name,
                comment,
                is_default: default.then_some(true),
                is_default_network: None,
            };
            let vnet = backend.update_vnet(id, &input).await?;
            if json {
                return print_json(out, &vnet);
            }
            writeln!(
                out,
                "✅ Updated virtual network {:?} ({}){}",
                vnet.name,
                vnet.id,
                if vnet.is_default { ", the default" } else { "" }
            )?;
        }
        VnetCommand::Delete { vnet } => {
            let id = backend.vnet(&vnet).await?.id;
            let vnet = backend.delete_vnet(id).await?;
            writeln!(
                out,
                "✅ Deleted virtual network {:?} ({})",
                vnet.name, vnet.id
            )?;
        }
    }
    Ok(())
}

/// Runs a `wvpc route` subcommand: against the API when `api` is given, else on the local
/// state.
pub async fn run_route(
    command: RouteCommand,
    state: &crate::StateDir,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let backend = Backend::open(state, api).await?;
    let RouteCommand::Ip(command) = command;
    match command {
        RouteIpCommand::Add {
            network,
            tunnel,
            vnet,
            comment,
            json,
        } => {
            let tunnel = backend.tunnel(&tunnel).await?;
            let vnet = match vnet {
                Some(vnet) => Some(backend.vnet(&vnet).await?),
                None => None,
            };
            let input = RouteInput {
                network: Some(network),
                tunnel_id: Some(tunnel.0.to_string()),
                virtual_network_id: vnet.as_ref().map(|v| v.id.to_string()),
                comment,
            };
            let route = backend.create_route(&input).await?;
            if json {
                return print_json(out, &route);
            }
            let vnet_name = match vnet {
                Some(vnet) => vnet.name,
                None => {
                    backend
                        .vnet(&route.virtual_network_id.to_string())
                        .await?
                        .name
                }
            };
            writeln!(
                out,
                "✅ Added route {} through tunnel {:?} ({}) in virtual network {vnet_name:?}: {}",
                route.network, route.tunnel_name, route.tunnel_id, route.id
            )?;
        }
        RouteIpCommand::List { vnet, tunnel, json } => {
            let filter = RouteFilter {
                virtual_network_id: match vnet {
                    Some(vnet) => Some(backend.vnet(&vnet).await?.id),
                    None => None,
                },
                tunnel_id: match tunnel {
                    Some(tunnel) => Some(backend.tunnel(&tunnel).await?.0),
                    None => None,
                },
            };
            let routes = backend.routes(filter).await?;
            if json {
                return print_json(out, &routes);
            }
            let vnets = backend.vnets().await?;
            print_routes(&routes, &vnets, out)?;
        }
        RouteIpCommand::Delete { route, vnet } => {
            let id = match Uuid::parse_str(&route) {
                Ok(id) => id,
                Err(_) => {
                    let vnet = match vnet {
                        Some(vnet) => backend.vnet(&vnet).await?,
                        None => backend.default_vnet().await?,
                    };
                    let routes = backend
                        .routes(RouteFilter {
                            virtual_network_id: Some(vnet.id),
                            tunnel_id: None,
                        })
                        .await?;
                    let found = routes
                        .iter()
                        .find(|r| r.network.to_string() == route)
                        .with_context(|| {
                            format!(
                                "no route for {route} in virtual network {:?} (`wvpc route ip \
                                 list --vnet {}` shows its routes; give --vnet for another \
                                 virtual network)",
                                vnet.name, vnet.name
                            )
                        })?;
                    found.id
                }
            };
            let route = backend.delete_route(id).await?;
            writeln!(
                out,
                "✅ Deleted route {} through tunnel {:?} ({})",
                route.network, route.tunnel_name, route.id
            )?;
        }
    }
    Ok(())
}

/// Where virtual networks and routes are kept: the local database, or a directory API.
enum Backend {
    Local(Directory),
    Remote(Remote),
}

impl Backend {
    async fn open(state: &crate::StateDir, api: &ApiArgs) -> anyhow::Result<Backend> {
        Ok(match &api.api {
            Some(url) => Backend::Remote(Remote::connect(url, api.account.as_deref()).await?),
            None => Backend::Local(state.open_directory()?),
        })
    }

    async fn vnets(&self) -> anyhow::Result<Vec<VirtualNetwork>> {
        match self {
            Backend::Local(dir) => Ok(dir.list_virtual_networks()?),
            Backend::Remote(r) => Ok(r.client.list_virtual_networks(&r.account).await?),
        }
    }

    /// The virtual network named by `name_or_id`; an error saying where to look if none.
    async fn vnet(&self, name_or_id: &str) -> anyhow::Result<VirtualNetwork> {
        let found = match self {
            Backend::Local(dir) => dir.find_virtual_network(name_or_id)?,
            Backend::Remote(_) => self
                .vnets()
                .await?
                .into_iter()
                .find(|v| v.id.to_string() == name_or_id || v.name == name_or_id),
        };
        found.ok_or_else(|| DirectoryError::VirtualNetworkNotFound(name_or_id.to_owned()).into())
    }

    async fn default_vnet(&self) -> anyhow::Result<VirtualNetwork> {
        self.vnets()
            .await?
            .into_iter()
            .find(|v| v.is_default_network)
            .context("the account has no default virtual network")
    }

    async fn create_vnet(&self, input: &VirtualNetworkInput) -> anyhow::Result<VirtualNetwork> {
        match self {
            Backend::Local(dir) => dir.create_virtual_network(input).map_err(explain),
            Backend::Remote(r) => remote(
                r.client.create_virtual_network(&r.account, input).await,
                "virtual network",
            ),
        }
    }

    async fn update_vnet(
        &self,
        id: Uuid,
        input: &VirtualNetworkInput,
    ) -> anyhow::Result<VirtualNetwork> {
        match self {
            Backend::Local(dir) => dir.update_virtual_network(id, input).map_err(explain),
            Backend::Remote(r) => remote(
                r.client.update_virtual_network(&r.account, id, input).await,
                "virtual network",
            ),
        }
    }

    async fn delete_vnet(&self, id: Uuid) -> anyhow::Result<VirtualNetwork> {
        match self {
            Backend::Local(dir) => dir.delete_virtual_network(id).map_err(explain),
            Backend::Remote(r) => remote(
                r.client.delete_virtual_network(&r.account, id).await,
                "virtual network",
            ),
        }
    }

    /// The tunnel named by `name_or_id`: `(id, name)`.
    async fn tunnel(&self, name_or_id: &str) -> anyhow::Result<(Uuid, String)> {
        let not_found = || {
            anyhow::anyhow!(
                "no tunnel {name_or_id:?} in this account (`wvpc tunnel list` shows them)"
            )
        };
        match self {
            Backend::Local(dir) => dir
                .find_tunnel(name_or_id)?
                .map(|t| (t.id, t.name))
                .ok_or_else(not_found),
            Backend::Remote(r) => r
                .list_all("cfd_tunnel")
                .await?
                .into_iter()
                .find(|t| t["id"] == name_or_id || t["name"] == name_or_id)
                .and_then(|t| {
                    Some((
                        Uuid::parse_str(t["id"].as_str()?).ok()?,
                        t["name"].as_str()?.to_owned(),
                    ))
                })
                .ok_or_else(not_found),
        }
    }

    async fn routes(&self, filter: RouteFilter) -> anyhow::Result<Vec<TeamnetRoute>> {
        match self {
            Backend::Local(dir) => Ok(dir.list_network_routes(filter)?),
            Backend::Remote(r) => Ok(r.client.list_network_routes(&r.account, filter).await?),
        }
    }

    async fn create_route(&self, input: &RouteInput) -> anyhow::Result<TeamnetRoute> {
        match self {
            Backend::Local(dir) => dir.create_network_route(input).map_err(explain),
            Backend::Remote(r) => remote(
                r.client.create_network_route(&r.account, input).await,
                "route",
            ),
        }
    }

    async fn delete_route(&self, id: Uuid) -> anyhow::Result<TeamnetRoute> {
        match self {
            Backend::Local(dir) => dir.delete_network_route(id).map_err(explain),
            Backend::Remote(r) => {
                remote(r.client.delete_network_route(&r.account, id).await, "route")
            }
        }
    }
}

/// Field problems are shown with their arguments and flags; everything else as the
/// directory says it.
fn explain(err: DirectoryError) -> anyhow::Error {
    match err {
        DirectoryError::InvalidNetworkInput { what, problems } => {
            InvalidInput { what, problems }.into()
        }
        other => other.into(),
    }
}

/// The API's validation errors shown like local ones.
fn remote<T>(result: Result<T, ClientError>, what: &'static str) -> anyhow::Result<T> {
    result.map_err(|err| match crate::remote::validation_problems(&err) {
        Some(problems) => InvalidInput { what, problems }.into(),
        None => err.into(),
    })
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match flag_for(&p.path) {
            Some(flag) => format!("\n  {flag} ({}): {}", p.path, p.message),
            None => format!("\n  {}: {}", p.path, p.message),
        })
        .collect()
}

/// The argument or flag that sets a field.
fn flag_for(path: &str) -> Option<&'static str> {
    Some(match path {
        "network" => "CIDR",
        "tunnel_id" => "TUNNEL",
        "virtual_network_id" => "--vnet",
        "comment" => "--comment",
        "name" => "NAME/--name",
        "is_default" => "--default",
        _ => return None,
    })
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

fn print_vnets(vnets: &[VirtualNetwork], out: &mut dyn Write) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = vnets
        .iter()
        .map(|v| {
            vec![
                v.id.to_string(),
                v.name.clone(),
                if v.is_default { "✔" } else { "" }.to_owned(),
                v.comment.clone(),
                super::tunnel::short_time(&v.created_at),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table::render(&["ID", "NAME", "IS DEFAULT", "COMMENT", "CREATED"], &rows)
    )?;
    Ok(())
}

fn print_routes(
    routes: &[TeamnetRoute],
    vnets: &[VirtualNetwork],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if routes.is_empty() {
        writeln!(
            out,
            "No routes. Add one with `wvpc route ip add CIDR TUNNEL [--vnet NAME]`."
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let vnet = vnets
                .iter()
                .find(|v| v.id == r.virtual_network_id)
                .map_or_else(|| r.virtual_network_id.to_string(), |v| v.name.clone());
            vec![
                r.id.to_string(),
                r.network.to_string(),
                vnet,
                r.tunnel_name.clone(),
                r.tunnel_id.to_string(),
                r.comment.clone(),
                super::tunnel::short_time(&r.created_at),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table::render(
            &[
                "ID",
                "NETWORK",
                "VIRTUAL NET",
                "TUNNEL",
                "TUNNEL ID",
                "COMMENT",
                "CREATED"
            ],
            &rows
        )
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_has_its_argument() {
        for path in [
            "network",
            "tunnel_id",
            "virtual_network_id",
            "comment",
            "name",
            "is_default",
        ] {
            assert!(super::flag_for(path).is_some(), "{path}");
        }
    }
}

//! Private networks of an account: virtual networks and the IP routes inside them
//! (Cloudflare's `teamnet/virtual_networks` and `teamnet/routes`, cloudflared's `vnet` and
//! `route ip`).
//!
//! Every account has exactly one default virtual network (created with the account; schema
//! migration 10 / PostgreSQL 3 created one named `default` for each account that existed).
//! A route sends one CIDR of one virtual network to one tunnel of the account; a network may
//! be routed once per virtual network, nested prefixes are allowed (the data plane picks the
//! longest match, [`crate::network_routes`]).
//!
//! What is refused, each with the field and what to do: a malformed CIDR or one with host
//! bits set, a tunnel or virtual network that is not the account's, a duplicate network or
//! name, deleting a virtual network still in use (its routes, being the default, a script's
//! `vpc_network` binding, a VPC service naming it), deleting a tunnel that routes use
//! ([`crate::Directory::delete_tunnel`]).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;
use crate::network_routes::NetworkRoute;
use crate::store::{Row, Tx, params};
use crate::tunnel::parse_uuid;
use crate::validation::Problem;

/// Name of the virtual network every account starts with.
pub const DEFAULT_NETWORK_NAME: &str = "default";

/// Longest virtual network name accepted.
pub const MAX_VNET_NAME_LEN: usize = 255;

/// Longest comment accepted (on virtual networks and routes).
pub const MAX_COMMENT_LEN: usize = 1000;

/// A virtual network in Cloudflare's v4 shape:
/// `{id, name, comment, is_default_network, is_default, created_at, deleted_at: null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualNetwork {
    /// The virtual network's id (`cf1:vnet:<id>` in a `network_id`).
    pub id: Uuid,
    /// Name, unique in the account.
    pub name: String,
    /// Free text; empty when none was given.
    pub comment: String,
    /// Whether this is the account's default (`cf1:network`).
    pub is_default_network: bool,
    /// The same as `is_default_network` (Cloudflare shows both).
    pub is_default: bool,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Always `null`: deleted virtual networks are gone.
    pub deleted_at: Option<String>,
}

/// A route in Cloudflare's v4 shape: `{id, network, tunnel_id, tunnel_name,
/// virtual_network_id, comment, created_at, deleted_at: null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamnetRoute {
    /// The route's id.
    pub id: Uuid,
    /// The CIDR, without host bits.
    #[serde(with = "cidr_text")]
    pub network: IpNet,
    /// The tunnel whose connectors reach the network.
    pub tunnel_id: Uuid,
    /// That tunnel's name.
    pub tunnel_name: String,
    /// The virtual network the route belongs to.
    pub virtual_network_id: Uuid,
    /// Free text; empty when none was given.
    pub comment: String,
    /// Creation time, RFC 3339 UTC.
    pub created_at: String,
    /// Always `null`: deleted routes are gone.
    pub deleted_at: Option<String>,
}

/// The body of a virtual network create (`name` required) or update (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualNetworkInput {
    /// `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `comment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `is_default`: make it the account's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default: Option<bool>,
    /// `is_default_network`: the same, as Cloudflare also spells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_default_network: Option<bool>,
}

/// The body of a route create (`network` and `tunnel_id` required) or update (every field
/// optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    /// `network`: a CIDR such as `10.0.0.0/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `tunnel_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
    /// `virtual_network_id` (default: the account's default virtual network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network_id: Option<String>,
    /// `comment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Which routes a list returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteFilter {
    /// Only routes of this virtual network.
    pub virtual_network_id: Option<Uuid>,
    /// Only routes through this tunnel.
    pub tunnel_id: Option<Uuid>,
}

/// Every virtual network and route of every account, for the data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSnapshot {
    /// Each virtual network and its account.
    pub vnet_accounts: HashMap<Uuid, String>,
    /// Each account's default virtual network.
    pub default_vnets: HashMap<String, Uuid>,
    /// Each tunnel and its account.
    pub tunnel_accounts: HashMap<Uuid, String>,
    /// Every route.
    pub routes: Vec<NetworkRoute>,
}

const VNET_COLUMNS: &str = "vnet_id, name, comment, is_default, created_at";

const ROUTE_COLUMNS: &str = "r.route_id, r.network, r.tunnel_id, t.name, r.vnet_id, r.comment, \
     r.created_at FROM network_routes r JOIN tunnels t ON t.tunnel_id = r.tunnel_id";

impl Directory {
    /// The account's virtual networks, oldest first.
    pub fn list_virtual_networks(&self) -> Result<Vec<VirtualNetwork>, DirectoryError> {
        self.read(|tx| list_vnets(tx, self.account_id()))
    }

    /// The virtual network with this id, if it is in the account.
    pub fn virtual_network(&self, id: Uuid) -> Result<Option<VirtualNetwork>, DirectoryError> {
        self.read(|tx| find_vnet(tx, self.account_id(), id))
    }

    /// The virtual network named by `id_or_name`: a UUID is taken as an id, anything else as
    /// a name.
    pub fn find_virtual_network(
        &self,
        id_or_name: &str,
    ) -> Result<Option<VirtualNetwork>, DirectoryError> {
        match Uuid::parse_str(id_or_name) {
            Ok(id) => self.virtual_network(id),
            Err(_) => self.read(|tx| vnet_by_name(tx, self.account_id(), id_or_name)),
        }
    }

    /// The account's default virtual network (`cf1:network`).
    pub fn default_virtual_network(&self) -> Result<VirtualNetwork, DirectoryError> {
        self.read(|tx| default_vnet(tx, self.account_id()))
    }

    /// Creates a virtual network; with `is_default` it becomes the account's default and the
    /// previous default stops being one.
    pub fn create_virtual_network(
        &self,
        input: &VirtualNetworkInput,
    ) -> Result<VirtualNetwork, DirectoryError> {
        let mut problems = Vec::new();
        let name = match &input.name {
            None => {
                problems.push(problem("name", "required; give the virtual network a name"));
                None
            }
            Some(name) => check_vnet_name(name, &mut problems),
        };
        let comment = check_comment(input.comment.as_deref(), &mut problems);
        let make_default = vnet_default_flag(input, &mut problems);
        if !problems.is_empty() {
            return Err(invalid("virtual network", problems));
        }
        let (Some(name), Some(make_default)) = (name, make_default) else {
            return Err(invalid("virtual network", problems));
        };
        let account = self.account_id();
        let vnet = self.write(|tx| {
            if vnet_by_name(tx, account, &name)?.is_some() {
                return Err(DirectoryError::VirtualNetworkNameTaken(name.clone()));
            }
            let id = Uuid::new_v4();
            let make_default = make_default.unwrap_or(false);
            if make_default {
                clear_default(tx, account)?;
            }
            insert_vnet(
                tx,
                account,
                id,
                &name,
                comment.as_deref().unwrap_or(""),
                make_default,
            )?;
            find_vnet(tx, account, id)?.ok_or_else(|| vanished("virtual network", id))
        })?;
        tracing::debug!(vnet_id = %vnet.id, name = vnet.name, "virtual network created");
        Ok(vnet)
    }

    /// Changes the fields `input` sets. `is_default: true` makes it the default (the previous
    /// default stops being one); `is_default: false` on the default is refused, since an
    /// account always has one: make another one the default instead.
    pub fn update_virtual_network(
        &self,
        id: Uuid,
        input: &VirtualNetworkInput,
    ) -> Result<VirtualNetwork, DirectoryError> {
        let mut problems = Vec::new();
        let name = input
            .name
            .as_deref()
            .and_then(|name| check_vnet_name(name, &mut problems));
        let comment = check_comment(input.comment.as_deref(), &mut problems);
        let make_default = vnet_default_flag(input, &mut problems).flatten();
        if !problems.is_empty() {
            return Err(invalid("virtual network", problems));
        }
        let account = self.account_id();
        self.write(|tx| {
            let existing = find_vnet(tx, account, id)?
                .ok_or_else(|| DirectoryError::VirtualNetworkNotFound(id.to_string()))?;
            if let Some(name) = &name
                && *name != existing.name
            {
                if vnet_by_name(tx, account, name)?.is_some() {
                    return Err(DirectoryError::VirtualNetworkNameTaken(name.clone()));
                }
                tx.execute(
                    "UPDATE virtual_networks SET name = ?2 WHERE vnet_id = ?1",
                    params![id.to_string(), name],
                )?;
            }
            if let Some(comment) = &comment {
                tx.execute(
                    "UPDATE virtual_networks SET comment = ?2 WHERE vnet_id = ?1",
                    params![id.to_string(), comment],
                )?;
            }
            match make_default {
                Some(true) if !existing.is_default_network => {
                    clear_default(tx, account)?;
                    tx.execute(
                        "UPDATE virtual_networks SET is_default = 1 WHERE vnet_id = ?1",
                        params![id.to_string()],
                    )?;
                }
                Some(false) if existing.is_default_network => {
                    return Err(invalid(
                        "virtual network",
                        vec![problem(
                            "is_default",
                            format!(
                                "{:?} is the account's default virtual network and an account \
                                 always has one; make another virtual network the default \
                                 instead (`wvpc vnet update OTHER --default`)",
                                existing.name
                            ),
                        )],
                    ));
                }
                _ => {}
            }
            find_vnet(tx, account, id)?.ok_or_else(|| vanished("virtual network", id))
        })
    }

    /// Deletes a virtual network; refused (naming what uses it) while it has routes, is the
    /// default, is bound by a script's active version or named by a VPC service.
    pub fn delete_virtual_network(&self, id: Uuid) -> Result<VirtualNetwork, DirectoryError> {
        let account = self.account_id();
        let vnet = self.write(|tx| {
            let vnet = find_vnet(tx, account, id)?
                .ok_or_else(|| DirectoryError::VirtualNetworkNotFound(id.to_string()))?;
            let mut users = Vec::new();
            if vnet.is_default_network {
                users.push(
                    "it is the account's default virtual network (make another one the default \
                     first: `wvpc vnet update OTHER --default`)"
                        .to_owned(),
                );
            }
            let routes: Vec<String> = tx.query_map(
                "SELECT network FROM network_routes WHERE vnet_id = ?1 ORDER BY created_at",
                params![id.to_string()],
                |row| row.get(0),
            )?;
            if !routes.is_empty() {
                users.push(format!(
                    "route(s) {} (delete them first: `wvpc route ip delete CIDR --vnet {}`)",
                    routes.join(", "),
                    vnet.name
                ));
            }
            let network_id = format!("{}{id}", wvpc_schemas::network::VNET_PREFIX);
            let scripts = scripts_binding_network(tx, account, &network_id)?;
            if !scripts.is_empty() {
                users.push(format!(
                    "the active version of script(s) {} binds it as {network_id} (deploy them \
                     without that vpc_networks binding first)",
                    quoted(&scripts)
                ));
            }
            let services: Vec<String> = tx.query_map(
                "SELECT name FROM services WHERE account_id = ?1 AND virtual_network_id = ?2
                 ORDER BY created_at",
                params![account, id.to_string()],
                |row| row.get(0),
            )?;
            if !services.is_empty() {
                users.push(format!(
                    "VPC service(s) {} name it in host.network / host.resolver_network (update \
                     them first)",
                    quoted(&services)
                ));
            }
            if !users.is_empty() {
                return Err(DirectoryError::VirtualNetworkInUse {
                    id,
                    name: vnet.name,
                    users,
                });
            }
            tx.execute(
                "DELETE FROM virtual_networks WHERE vnet_id = ?1",
                params![id.to_string()],
            )?;
            Ok(vnet)
        })?;
        tracing::debug!(vnet_id = %id, name = vnet.name, "virtual network deleted");
        Ok(vnet)
    }

    /// The account's routes, oldest first, filtered.
    pub fn list_network_routes(
        &self,
        filter: RouteFilter,
    ) -> Result<Vec<TeamnetRoute>, DirectoryError> {
        self.read(|tx| {
            tx.query_map(
                &format!(
                    "SELECT {ROUTE_COLUMNS} WHERE r.account_id = ?1
                       AND (CAST(?2 AS TEXT) IS NULL OR r.vnet_id = ?2)
                       AND (CAST(?3 AS TEXT) IS NULL OR r.tunnel_id = ?3)
                     ORDER BY r.created_at, r.route_id"
                ),
                params![
                    self.account_id(),
                    filter.virtual_network_id.map(|id| id.to_string()),
                    filter.tunnel_id.map(|id| id.to_string())
                ],
                route_from_row,
            )
        })
    }

    /// The route with this id, if it is in the account.
    pub fn network_route(&self, id: Uuid) -> Result<Option<TeamnetRoute>, DirectoryError> {
        self.read(|tx| find_route(tx, self.account_id(), id))
    }

    /// Routes `input.network` of a virtual network (the default one unless given) to a
    /// tunnel of the account.
    pub fn create_network_route(&self, input: &RouteInput) -> Result<TeamnetRoute, DirectoryError> {
        let account = self.account_id();
        let route = self.write(|tx| {
            let spec = check_route(tx, account, input, None)?;
            let id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO network_routes (route_id, account_id, vnet_id, network, tunnel_id,
                                             comment, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id.to_string(),
                    account,
                    spec.vnet.to_string(),
                    spec.network.to_string(),
                    spec.tunnel.to_string(),
                    spec.comment,
                    now_rfc3339()
                ],
            )?;
            find_route(tx, account, id)?.ok_or_else(|| vanished("route", id))
        })?;
        tracing::debug!(route_id = %route.id, network = %route.network, "network route created");
        Ok(route)
    }

    /// Changes the fields `input` sets, under the rules of a new route.
    pub fn update_network_route(
        &self,
        id: Uuid,
        input: &RouteInput,
    ) -> Result<TeamnetRoute, DirectoryError> {
        let account = self.account_id();
        self.write(|tx| {
            let existing = find_route(tx, account, id)?
                .ok_or_else(|| DirectoryError::RouteNotFound(id.to_string()))?;
            let spec = check_route(tx, account, input, Some(&existing))?;
            tx.execute(
                "UPDATE network_routes SET vnet_id = ?2, network = ?3, tunnel_id = ?4,
                   comment = ?5 WHERE route_id = ?1",
                params![
                    id.to_string(),
                    spec.vnet.to_string(),
                    spec.network.to_string(),
                    spec.tunnel.to_string(),
                    spec.comment
                ],
            )?;
            still_routed(tx, account, &existing)?;
            find_route(tx, account, id)?.ok_or_else(|| vanished("route", id))
        })
    }

    /// Deletes a route.
    pub fn delete_network_route(&self, id: Uuid) -> Result<TeamnetRoute, DirectoryError> {
        let account = self.account_id();
        let route = self.write(|tx| {
            let route = find_route(tx, account, id)?
                .ok_or_else(|| DirectoryError::RouteNotFound(id.to_string()))?;
            tx.execute(
                "DELETE FROM network_routes WHERE route_id = ?1",
                params![id.to_string()],
            )?;
            still_routed(tx, account, &route)?;
            Ok(route)
        })?;
        tracing::debug!(route_id = %id, network = %route.network, "network route deleted");
        Ok(route)
    }
}

/// A route that passed every check.
struct RouteSpec {
    network: IpNet,
    tunnel: Uuid,
    vnet: Uuid,
    comment: String,
}

/// Checks a route create (`existing: None`) or update inside the write transaction: every
/// problem of the fields at once, then ownership and uniqueness.
fn check_route(
    tx: &Tx<'_>,
    account: &str,
    input: &RouteInput,
    existing: Option<&TeamnetRoute>,
) -> Result<RouteSpec, DirectoryError> {
    let mut problems = Vec::new();
    let network = match (&input.network, existing) {
        (Some(text), _) => parse_cidr(text)
            .map_err(|why| problems.push(problem("network", why)))
            .ok(),
        (None, Some(route)) => Some(route.network),
        (None, None) => {
            problems.push(problem(
                "network",
                "required; give the IP network to route as a CIDR, e.g. 10.0.0.0/24",
            ));
            None
        }
    };
    let tunnel = match (&input.tunnel_id, existing) {
        (Some(text), _) => match Uuid::parse_str(text) {
            Err(_) => {
                problems.push(problem(
                    "tunnel_id",
                    format!("{text:?} is not a tunnel id (a UUID, as `wvpc tunnel list` prints)"),
                ));
                None
            }
            Ok(id) => {
                let owner: Option<String> = tx.query_opt(
                    "SELECT account_id FROM tunnels WHERE tunnel_id = ?1",
                    params![id.to_string()],
                    |row| row.get(0),
                )?;
                match owner {
                    None => {
                        problems.push(problem(
                            "tunnel_id",
                            format!(
                                "no tunnel {id} in this account; create it first or fix the id \
                                 (`wvpc tunnel list` shows the account's tunnels)"
                            ),
                        ));
                        None
                    }
                    Some(owner) if owner != account => {
                        return Err(DirectoryError::ForeignTunnel {
                            field: "tunnel_id",
                            tunnel_id: id,
                        });
                    }
                    Some(_) => Some(id),
                }
            }
        },
        (None, Some(route)) => Some(route.tunnel_id),
        (None, None) => {
            problems.push(problem(
                "tunnel_id",
                "required; give the tunnel whose connectors reach the network (`wvpc tunnel \
                 list`)",
            ));
            None
        }
    };
    let vnet = match (&input.virtual_network_id, existing) {
        (Some(text), _) => {
            let found = match Uuid::parse_str(text) {
                Ok(id) => find_vnet(tx, account, id)?,
                Err(_) => None,
            };
            if found.is_none() {
                problems.push(problem(
                    "virtual_network_id",
                    format!(
                        "{text:?} is not a virtual network of this account; use an id that \
                         `wvpc vnet list` prints, or omit it for the default virtual network"
                    ),
                ));
            }
            found
        }
        (None, Some(route)) => find_vnet(tx, account, route.virtual_network_id)?,
        (None, None) => Some(default_vnet(tx, account)?),
    };
    let comment = check_comment(input.comment.as_deref(), &mut problems)
        .or_else(|| existing.map(|r| r.comment.clone()))
        .unwrap_or_default();
    let (Some(network), Some(tunnel), Some(vnet), true) =
        (network, tunnel, vnet, problems.is_empty())
    else {
        return Err(invalid("route", problems));
    };
    let taken = tx.query_opt(
        &format!("SELECT {ROUTE_COLUMNS} WHERE r.vnet_id = ?1 AND r.network = ?2"),
        params![vnet.id.to_string(), network.to_string()],
        route_from_row,
    )?;
    if let Some(taken) = taken
        && existing.is_none_or(|e| e.id != taken.id)
    {
        return Err(DirectoryError::RouteExists {
            network: network.to_string(),
            vnet_name: vnet.name,
            route_id: taken.id,
            tunnel_name: taken.tunnel_name,
            tunnel_id: taken.tunnel_id,
        });
    }
    Ok(RouteSpec {
        network,
        tunnel,
        vnet: vnet.id,
        comment,
    })
}

/// After `route` was deleted or changed (inside the write): refuses when a VPC service of
/// the account names the route's virtual network and has an address no remaining route of
/// its tunnel there covers (the transaction then rolls back).
fn still_routed(tx: &Tx<'_>, account: &str, route: &TeamnetRoute) -> Result<(), DirectoryError> {
    let services: Vec<(String, Option<String>, Option<String>)> = tx.query_map(
        "SELECT name, ipv4, ipv6 FROM services
         WHERE account_id = ?1 AND virtual_network_id = ?2 AND tunnel_id = ?3
           AND hostname IS NULL
         ORDER BY created_at",
        params![
            account,
            route.virtual_network_id.to_string(),
            route.tunnel_id.to_string()
        ],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    if services.is_empty() {
        return Ok(());
    }
    let routes = tunnel_routes_in(tx, account, route.virtual_network_id, route.tunnel_id)?;
    let stranded: Vec<String> = services
        .into_iter()
        .filter_map(|(name, ipv4, ipv6)| {
            let lost: Vec<String> = ipv4
                .into_iter()
                .chain(ipv6)
                .filter(|ip| {
                    ip.parse::<IpAddr>()
                        .is_ok_and(|ip| !routes.iter().any(|net| net.contains(&ip)))
                })
                .collect();
            (!lost.is_empty()).then(|| format!("{name:?} ({})", lost.join(", ")))
        })
        .collect();
    if stranded.is_empty() {
        return Ok(());
    }
    Err(DirectoryError::RouteInUse {
        network: route.network.to_string(),
        services: stranded,
    })
}

/// A CIDR without host bits; a bare address or host bits are refused with the spelling to
/// use instead.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    match text.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err(format!(
            "{text:?} has host bits set; use the network address {:?}",
            net.trunc().to_string()
        )),
        Err(_) => match text.parse::<IpAddr>() {
            Ok(ip) => Err(format!(
                "{text:?} is an address, not a network; give a CIDR such as {:?}",
                IpNet::from(ip).to_string()
            )),
            Err(_) => Err(format!(
                "{text:?} is not a CIDR; give an IPv4 or IPv6 network such as 10.0.0.0/24 or \
                 fd00::/64"
            )),
        },
    }
}

/// `is_default` / `is_default_network`: `None` inside when neither is given; the outer
/// `None` when they contradict each other.
fn vnet_default_flag(
    input: &VirtualNetworkInput,
    problems: &mut Vec<Problem>,
) -> Option<Option<bool>> {
    match (input.is_default, input.is_default_network) {
        (Some(a), Some(b)) if a != b => {
            problems.push(problem(
                "is_default",
                "is_default and is_default_network disagree; give one of them",
            ));
            None
        }
        (a, b) => Some(a.or(b)),
    }
}

fn check_vnet_name(name: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let why = if name.trim().is_empty() {
        "must not be empty; give the virtual network a name"
    } else if name.chars().count() > MAX_VNET_NAME_LEN {
        "is longer than 255 characters; use a shorter name"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters (newlines, tabs, ...)"
    } else if name != name.trim() {
        "must not start or end with whitespace"
    } else if Uuid::parse_str(name).is_ok() {
        "must not be a UUID (commands take a virtual network id or name, so it would be \
         ambiguous)"
    } else {
        return Some(name.to_owned());
    };
    problems.push(problem("name", format!("{name:?} {why}")));
    None
}

fn check_comment(comment: Option<&str>, problems: &mut Vec<Problem>) -> Option<String> {
    let comment = comment?;
    if comment.chars().count() > MAX_COMMENT_LEN {
        problems.push(problem(
            "comment",
            format!("is longer than {MAX_COMMENT_LEN} characters; shorten it"),
        ));
        return None;
    }
    Some(comment.to_owned())
}

fn problem(path: &str, message: impl Into<String>) -> Problem {
    Problem {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn invalid(what: &'static str, problems: Vec<Problem>) -> DirectoryError {
    DirectoryError::InvalidNetworkInput { what, problems }
}

fn vanished(what: &str, id: Uuid) -> DirectoryError {
    DirectoryError::Corrupt {
        what: format!("{what} {id}"),
        detail: "not readable right after it was stored".into(),
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Names of the account's scripts whose active version has a binding with this
/// `network_id`.
fn scripts_binding_network(
    tx: &Tx<'_>,
    account: &str,
    network_id: &str,
) -> Result<Vec<String>, DirectoryError> {
    let rows: Vec<(String, String)> = tx.query_map(
        "SELECT s.name, v.bindings FROM scripts s
         JOIN script_versions v ON v.version_id = s.active_version
         WHERE s.account_id = ?1 ORDER BY s.name",
        params![account],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let mut names = Vec::new();
    for (name, bindings) in rows {
        let bindings: Vec<crate::scripts::ScriptBinding> =
            crate::scripts::from_json(&format!("bindings of script {name:?}"), &bindings)?;
        if bindings
            .iter()
            .any(|b| b.network_id.as_deref() == Some(network_id))
        {
            names.push(name);
        }
    }
    Ok(names)
}

fn list_vnets(tx: &Tx<'_>, account: &str) -> Result<Vec<VirtualNetwork>, DirectoryError> {
    tx.query_map(
        &format!(
            "SELECT {VNET_COLUMNS} FROM virtual_networks WHERE account_id = ?1
             ORDER BY created_at, vnet_id"
        ),
        params![account],
        vnet_from_row,
    )
}

pub(crate) fn find_vnet(
    tx: &Tx<'_>,
    account: &str,
    id: Uuid,
) -> Result<Option<VirtualNetwork>, DirectoryError> {
    tx.query_opt(
        &format!(
            "SELECT {VNET_COLUMNS} FROM virtual_networks WHERE vnet_id = ?1 AND account_id = ?2"
        ),
        [id.to_string(), account.to_owned()],
        vnet_from_row,
    )
}

fn vnet_by_name(
    tx: &Tx<'_>,
    account: &str,
    name: &str,
) -> Result<Option<VirtualNetwork>, DirectoryError> {
    tx.query_opt(
        &format!("SELECT {VNET_COLUMNS} FROM virtual_networks WHERE account_id = ?1 AND name = ?2"),
        [account, name],
        vnet_from_row,
    )
}

fn default_vnet(tx: &Tx<'_>, account: &str) -> Result<VirtualNetwork, DirectoryError> {
    tx.query_opt(
        &format!(
            "SELECT {VNET_COLUMNS} FROM virtual_networks WHERE account_id = ?1 AND is_default = 1"
        ),
        params![account],
        vnet_from_row,
    )?
    .ok_or_else(|| DirectoryError::Corrupt {
        what: format!("account {account}"),
        detail: "it has no default virtual network".into(),
    })
}

fn clear_default(tx: &Tx<'_>, account: &str) -> Result<(), DirectoryError> {
    tx.execute(
        "UPDATE virtual_networks SET is_default = 0 WHERE account_id = ?1 AND is_default = 1",
        params![account],
    )?;
    Ok(())
}

fn insert_vnet(
    tx: &Tx<'_>,
    account: &str,
    id: Uuid,
    name: &str,
    comment: &str,
    is_default: bool,
) -> Result<(), DirectoryError> {
    tx.execute(
        "INSERT INTO virtual_networks (vnet_id, account_id, name, comment, is_default, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id.to_string(),
            account,
            name,
            comment,
            is_default,
            now_rfc3339()
        ],
    )?;
    Ok(())
}

/// Gives `account` its default virtual network (a new account, inside its write).
pub(crate) fn create_default_network(tx: &Tx<'_>, account: &str) -> Result<(), DirectoryError> {
    insert_vnet(tx, account, Uuid::new_v4(), DEFAULT_NETWORK_NAME, "", true)
}

/// The schema migration that introduced virtual networks: every account without one gets its
/// default, named `default`.
pub(crate) fn backfill_default_networks(tx: &Tx<'_>) -> Result<(), DirectoryError> {
    let accounts: Vec<String> = tx.query_map(
        "SELECT account_id FROM accounts a WHERE NOT EXISTS (
           SELECT 1 FROM virtual_networks v WHERE v.account_id = a.account_id)
         ORDER BY created_at",
        params![],
        |row| row.get(0),
    )?;
    for account in accounts {
        create_default_network(tx, &account)?;
    }
    Ok(())
}

/// Every virtual network and route of every account (inside the snapshot's transaction).
pub(crate) fn network_snapshot(tx: &Tx<'_>) -> Result<NetworkSnapshot, DirectoryError> {
    let mut snapshot = NetworkSnapshot::default();
    let vnets: Vec<(String, String, bool)> = tx.query_map(
        "SELECT vnet_id, account_id, is_default FROM virtual_networks",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    for (id, account, is_default) in vnets {
        let id = parse_uuid("virtual network id", &id)?;
        if is_default {
            snapshot.default_vnets.insert(account.clone(), id);
        }
        snapshot.vnet_accounts.insert(id, account);
    }
    let tunnels: Vec<(String, String)> = tx.query_map(
        "SELECT tunnel_id, account_id FROM tunnels",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    for (id, account) in tunnels {
        snapshot
            .tunnel_accounts
            .insert(parse_uuid("tunnel id", &id)?, account);
    }
    let routes: Vec<(String, String, String)> = tx.query_map(
        "SELECT vnet_id, network, tunnel_id FROM network_routes",
        params![],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    for (vnet, network, tunnel) in routes {
        snapshot.routes.push(NetworkRoute {
            vnet: parse_uuid("virtual network id", &vnet)?,
            network: network.parse().map_err(|_| DirectoryError::Corrupt {
                what: "route network".into(),
                detail: format!("{network:?} is not a CIDR"),
            })?,
            tunnel: parse_uuid("tunnel id", &tunnel)?,
        });
    }
    Ok(snapshot)
}

/// `(route id, network)` of every route through `tunnel` (a tunnel delete refuses them).
pub(crate) fn routes_of_tunnel(
    tx: &Tx<'_>,
    tunnel: Uuid,
) -> Result<Vec<(Uuid, String)>, DirectoryError> {
    tx.query_map(
        "SELECT route_id, network FROM network_routes WHERE tunnel_id = ?1
         ORDER BY created_at, route_id",
        params![tunnel.to_string()],
        |row| Ok((parse_uuid("route id", &row.get::<String>(0)?)?, row.get(1)?)),
    )
}

/// Routes of `account`'s virtual network `vnet` through `tunnel` (a service's check).
pub(crate) fn tunnel_routes_in(
    tx: &Tx<'_>,
    account: &str,
    vnet: Uuid,
    tunnel: Uuid,
) -> Result<Vec<IpNet>, DirectoryError> {
    let rows: Vec<String> = tx.query_map(
        "SELECT network FROM network_routes
         WHERE account_id = ?1 AND vnet_id = ?2 AND tunnel_id = ?3",
        params![account, vnet.to_string(), tunnel.to_string()],
        |row| row.get(0),
    )?;
    Ok(rows.iter().filter_map(|n| n.parse().ok()).collect())
}

fn find_route(
    tx: &Tx<'_>,
    account: &str,
    id: Uuid,
) -> Result<Option<TeamnetRoute>, DirectoryError> {
    tx.query_opt(
        &format!("SELECT {ROUTE_COLUMNS} WHERE r.route_id = ?1 AND r.account_id = ?2"),
        [id.to_string(), account.to_owned()],
        route_from_row,
    )
}

fn vnet_from_row(row: &Row) -> Result<VirtualNetwork, DirectoryError> {
    let is_default: bool = row.get(3)?;
    Ok(VirtualNetwork {
        id: parse_uuid("virtual network id", &row.get::<String>(0)?)?,
        name: row.get(1)?,
        comment: row.get(2)?,
        is_default_network: is_default,
        is_default,
        created_at: row.get(4)?,
        deleted_at: None,
    })
}

fn route_from_row(row: &Row) -> Result<TeamnetRoute, DirectoryError> {
    let network: String = row.get(1)?;
    Ok(TeamnetRoute {
        id: parse_uuid("route id", &row.get::<String>(0)?)?,
        network: network.parse().map_err(|_| DirectoryError::Corrupt {
            what: "route network".into(),
            detail: format!("{network:?} is not a CIDR"),
        })?,
        tunnel_id: parse_uuid("tunnel id", &row.get::<String>(2)?)?,
        tunnel_name: row.get(3)?,
        virtual_network_id: parse_uuid("virtual network id", &row.get::<String>(4)?)?,
        comment: row.get(5)?,
        created_at: row.get(6)?,
        deleted_at: None,
    })
}

/// `IpNet` as its text in JSON.
mod cidr_text {
    use ipnet::IpNet;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::{BindingRequest, BindingTarget, ScriptUpload};
    use crate::tokens::Role;

    fn vnet(name: &str) -> VirtualNetworkInput {
        VirtualNetworkInput {
            name: Some(name.into()),
            ..VirtualNetworkInput::default()
        }
    }

    fn route(network: &str, tunnel: Uuid, vnet: Option<Uuid>) -> RouteInput {
        RouteInput {
            network: Some(network.into()),
            tunnel_id: Some(tunnel.to_string()),
            virtual_network_id: vnet.map(|v| v.to_string()),
            comment: None,
        }
    }

    fn problems(err: DirectoryError) -> Vec<String> {
        match err {
            DirectoryError::InvalidNetworkInput { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected invalid input, got {other}"),
        }
    }

    both_backends! {
    #[test]
    fn every_account_starts_with_one_default_network(state) {
        let dir = state.open();
        let listed = dir.list_virtual_networks().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, DEFAULT_NETWORK_NAME);
        assert!(listed[0].is_default_network && listed[0].is_default);
        assert_eq!(dir.default_virtual_network().unwrap(), listed[0]);
        let json = serde_json::to_value(&listed[0]).unwrap();
        assert_eq!(json["is_default"], true);
        assert_eq!(json["is_default_network"], true);
        assert!(json["deleted_at"].is_null());
        assert_eq!(json["comment"], "");

        let other = dir.create_account("team b").unwrap();
        let view = dir.for_account(&other.id).unwrap().unwrap();
        let theirs = view.list_virtual_networks().unwrap();
        assert_eq!(theirs.len(), 1);
        assert_ne!(theirs[0].id, listed[0].id);
        assert!(
            dir.virtual_network(theirs[0].id).unwrap().is_none(),
            "not ours"
        );
    }
    }

    both_backends! {
    #[test]
    fn making_a_network_default_undefaults_the_previous_one(state) {
        let dir = state.open();
        let first = dir.default_virtual_network().unwrap();
        let lab = dir
            .create_virtual_network(&VirtualNetworkInput {
                comment: Some("the lab".into()),
                is_default_network: Some(true),
                ..vnet("lab")
            })
            .unwrap();
        assert!(lab.is_default);
        assert_eq!(lab.comment, "the lab");
        assert_eq!(dir.default_virtual_network().unwrap().id, lab.id);
        assert!(!dir.virtual_network(first.id).unwrap().unwrap().is_default);

        let back = dir
            .update_virtual_network(
                first.id,
                &VirtualNetworkInput {
                    is_default: Some(true),
                    name: Some("office".into()),
                    ..VirtualNetworkInput::default()
                },
            )
            .unwrap();
        assert!(back.is_default && back.name == "office");
        assert!(!dir.virtual_network(lab.id).unwrap().unwrap().is_default);
        assert_eq!(
            dir.find_virtual_network("office").unwrap().unwrap().id,
            first.id
        );
        assert_eq!(
            dir.find_virtual_network(&lab.id.to_string())
                .unwrap()
                .unwrap()
                .name,
            "lab"
        );

        let err = dir
            .update_virtual_network(
                first.id,
                &VirtualNetworkInput {
                    is_default: Some(false),
                    ..VirtualNetworkInput::default()
                },
            )
            .unwrap_err();
        assert!(problems(err)[0].starts_with("is_default: \"office\" is the account's default"));
    }
    }

    both_backends! {
    #[test]
    fn names_are_unique_and_well_formed(state) {
        let dir = state.open();
        assert!(matches!(
            dir.create_virtual_network(&vnet("default")),
            Err(DirectoryError::VirtualNetworkNameTaken(n)) if n == "default"
        ));
        let err = dir
            .create_virtual_network(&VirtualNetworkInput::default())
            .unwrap_err();
        assert_eq!(
            problems(err),
            ["name: required; give the virtual network a name"]
        );
        for bad in ["", " lab", "a\nb", "6f1c1c4e-8a0b-4b7e-9d5a-2f6f0e0c1a11"] {
            let err = dir.create_virtual_network(&vnet(bad)).unwrap_err();
            assert!(problems(err)[0].starts_with("name: "), "{bad:?}");
        }
        let lab = dir.create_virtual_network(&vnet("lab")).unwrap();
        assert!(matches!(
            dir.update_virtual_network(lab.id, &vnet("default")),
            Err(DirectoryError::VirtualNetworkNameTaken(_))
        ));
    }
    }

    both_backends! {
    #[test]
    fn routes_are_checked_and_refused_with_what_to_do(state) {
        let dir = state.open();
        let (office, _) = dir.create_tunnel("office").unwrap();
        let default = dir.default_virtual_network().unwrap();

        let made = dir
            .create_network_route(&route("10.0.0.0/24", office.id, None))
            .unwrap();
        assert_eq!(made.virtual_network_id, default.id, "the default vnet");
        assert_eq!(made.tunnel_name, "office");
        let json = serde_json::to_value(&made).unwrap();
        assert_eq!(json["network"], "10.0.0.0/24");
        assert!(json["deleted_at"].is_null());

        // Nested prefixes are fine; the same one again is not.
        dir.create_network_route(&route("10.0.0.0/8", office.id, None))
            .unwrap();
        let err = dir
            .create_network_route(&route("10.0.0.0/24", office.id, None))
            .unwrap_err();
        assert!(
            matches!(&err, DirectoryError::RouteExists { route_id, .. } if *route_id == made.id)
        );
        let text = err.to_string();
        assert!(
            text.contains(&made.id.to_string()) && text.contains("\"office\""),
            "{text}"
        );

        let err = dir
            .create_network_route(&route("10.0.0.5/24", office.id, None))
            .unwrap_err();
        assert_eq!(
            problems(err),
            ["network: \"10.0.0.5/24\" has host bits set; use the network address \"10.0.0.0/24\""]
        );
        let err = dir
            .create_network_route(&route("10.0.0/24", office.id, None))
            .unwrap_err();
        assert!(problems(err)[0].starts_with("network: \"10.0.0/24\" is not a CIDR"));
        let err = dir
            .create_network_route(&route("10.0.0.5", office.id, None))
            .unwrap_err();
        assert!(problems(err)[0].contains("\"10.0.0.5/32\""));

        let unknown = Uuid::new_v4();
        let err = dir
            .create_network_route(&route("192.168.0.0/16", unknown, Some(unknown)))
            .unwrap_err();
        let found = problems(err);
        assert!(
            found[0].starts_with(&format!("tunnel_id: no tunnel {unknown} in this account")),
            "{found:?}"
        );
        assert!(found[1].starts_with("virtual_network_id: "), "{found:?}");

        // Another account's tunnel and virtual network.
        let other = dir.create_account("team b").unwrap();
        let theirs = dir.for_account(&other.id).unwrap().unwrap();
        let (their_tunnel, _) = theirs.create_tunnel("theirs").unwrap();
        let err = dir
            .create_network_route(&route("192.168.0.0/16", their_tunnel.id, None))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DirectoryError::ForeignTunnel {
                    field: "tunnel_id",
                    ..
                }
            ),
            "{err}"
        );
        let their_vnet = theirs.default_virtual_network().unwrap();
        let err = dir
            .create_network_route(&route("192.168.0.0/16", office.id, Some(their_vnet.id)))
            .unwrap_err();
        assert!(problems(err)[0].starts_with("virtual_network_id: "));

        // The same network in another virtual network is another route.
        let lab = dir.create_virtual_network(&vnet("lab")).unwrap();
        let in_lab = dir
            .create_network_route(&route("10.0.0.0/24", office.id, Some(lab.id)))
            .unwrap();
        assert_eq!(
            dir.list_network_routes(RouteFilter {
                virtual_network_id: Some(lab.id),
                tunnel_id: None
            })
            .unwrap(),
            std::slice::from_ref(&in_lab)
        );
        assert_eq!(
            dir.list_network_routes(RouteFilter {
                tunnel_id: Some(office.id),
                ..RouteFilter::default()
            })
            .unwrap()
            .len(),
            3
        );
        // An update under the same rules.
        let moved = dir
            .update_network_route(
                in_lab.id,
                &RouteInput {
                    comment: Some("lab net".into()),
                    ..RouteInput::default()
                },
            )
            .unwrap();
        assert_eq!(
            (moved.comment.as_str(), moved.network),
            ("lab net", in_lab.network)
        );
        assert!(matches!(
            dir.update_network_route(
                in_lab.id,
                &RouteInput {
                    virtual_network_id: Some(default.id.to_string()),
                    ..RouteInput::default()
                }
            ),
            Err(DirectoryError::RouteExists { .. })
        ));
    }
    }

    both_backends! {
    #[test]
    fn a_network_or_tunnel_in_use_is_not_deleted(state) {
        let dir = state.open();
        let (office, _) = dir.create_tunnel("office").unwrap();
        let default = dir.default_virtual_network().unwrap();
        let err = dir.delete_virtual_network(default.id).unwrap_err();
        assert!(
            err.to_string()
                .contains("it is the account's default virtual network"),
            "{err}"
        );

        let lab = dir.create_virtual_network(&vnet("lab")).unwrap();
        let net = dir
            .create_network_route(&route("10.1.0.0/16", office.id, Some(lab.id)))
            .unwrap();
        let (token, _) = dir.create_token("ci", Role::Bind, None).unwrap();
        let upload = ScriptUpload {
            bindings: vec![BindingRequest {
                binding: "LAB".into(),
                target: BindingTarget::Network(wvpc_schemas::NetworkTarget::VirtualNetwork(lab.id)),
            }],
            ..ScriptUpload::new(
                "worker.wasm",
                crate::component::fixtures::component("wasi:http/incoming-handler@0.2.0", &[]),
            )
        };
        dir.deploy_script(&token, "proxy", &upload).unwrap();

        let err = dir.delete_virtual_network(lab.id).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DirectoryError::VirtualNetworkInUse { .. }));
        assert!(text.contains("route(s) 10.1.0.0/16"), "{text}");
        assert!(text.contains("script(s) \"proxy\""), "{text}");

        let err = dir.delete_tunnel(office.id).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("10.1.0.0/16 ({})", net.id)),
            "{text}"
        );

        // A service in the lab whose address only this route covers keeps it.
        let mut db = crate::ServiceInput::http(
            "db",
            crate::HostInput::ips(Some("10.1.2.3".parse().unwrap()), None, office.id),
        );
        if let Some(network) = db.host.as_mut().and_then(|h| h.network.as_mut()) {
            network.virtual_network_id = Some(lab.id.to_string());
        }
        let db = dir.create_service(&db).unwrap();
        let err = dir.delete_network_route(net.id).unwrap_err().to_string();
        assert!(err.contains("\"db\" (10.1.2.3)"), "{err}");
        let err = dir
            .update_network_route(
                net.id,
                &RouteInput {
                    network: Some("10.2.0.0/16".into()),
                    ..RouteInput::default()
                },
            )
            .unwrap_err();
        assert!(matches!(err, DirectoryError::RouteInUse { .. }), "{err}");
        // Another route of the tunnel that covers it frees this one.
        let wider = dir
            .create_network_route(&route("10.0.0.0/8", office.id, Some(lab.id)))
            .unwrap();
        dir.delete_network_route(net.id).unwrap();
        dir.delete_service(db.service_id).unwrap();
        dir.delete_network_route(wider.id).unwrap();
        dir.delete_script("proxy").unwrap();
        assert_eq!(dir.delete_virtual_network(lab.id).unwrap().id, lab.id);
        assert!(matches!(
            dir.delete_virtual_network(lab.id),
            Err(DirectoryError::VirtualNetworkNotFound(_))
        ));
        dir.delete_tunnel(office.id).unwrap();
    }
    }

    both_backends! {
    #[test]
    fn the_snapshot_carries_every_network_and_owner(state) {
        let dir = state.open();
        let (office, _) = dir.create_tunnel("office").unwrap();
        dir.create_network_route(&route("10.0.0.0/24", office.id, None))
            .unwrap();
        let default = dir.default_virtual_network().unwrap();
        let snapshot = dir.route_snapshot().unwrap();
        let networks = &snapshot.networks;
        assert_eq!(networks.default_vnets[dir.account_id()], default.id);
        assert_eq!(networks.vnet_accounts[&default.id], dir.account_id());
        assert_eq!(networks.tunnel_accounts[&office.id], dir.account_id());
        assert_eq!(
            networks.routes,
            [NetworkRoute {
                vnet: default.id,
                network: "10.0.0.0/24".parse().unwrap(),
                tunnel: office.id
            }]
        );
    }
    }
}

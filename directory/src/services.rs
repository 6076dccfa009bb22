//! Create, list, get, replace and delete VPC services, and their row mapping.

use std::collections::HashSet;

use crate::store::{Row, Tx, params};
use uuid::Uuid;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;
use crate::service::{
    AppProtocol, CertVerificationMode, Host, Network, ResolverNetwork, Service, ServiceKind,
    ServiceType, TlsSettings,
};
use crate::service_input::ServiceInput;
use crate::tunnel::{parse_uuid, tunnel_ids};
use crate::validation::{ServiceSpec, validate};

/// Most services one account may have (Cloudflare's limit).
pub const SERVICE_LIMIT: usize = 1000;

const SERVICE_COLUMNS: &str = "service_id, name, type, http_port, https_port, tcp_port, \
     app_protocol, hostname, resolver_ips, ipv4, ipv6, tunnel_id, cert_verification_mode, \
     created_at, updated_at, ca_certificate, virtual_network_id";

impl Directory {
    /// Validates `input` (every rule, including that the tunnel exists in the account) and
    /// stores it as a new service. Fails with [`DirectoryError::Invalid`] listing every problem,
    /// or [`DirectoryError::ServiceLimit`] at [`Directory::service_limit`] services.
    pub fn create_service(&self, input: &ServiceInput) -> Result<Service, DirectoryError> {
        let service = self.write(|tx| {
            let spec = validate_in(tx, self.account_id(), input)?;
            let count: i64 = tx.query_one(
                "SELECT COUNT(*) FROM services WHERE account_id = ?1",
                [self.account_id()],
                |row| row.get(0),
            )?;
            if usize::try_from(count).unwrap_or(usize::MAX) >= self.service_limit() {
                return Err(DirectoryError::ServiceLimit {
                    limit: self.service_limit(),
                });
            }
            let now = now_rfc3339();
            let service = spec.into_service(Uuid::new_v4(), now.clone(), now);
            let row = ServiceRow::from_service(&service)?;
            tx.execute(
                &format!(
                    "INSERT INTO services (account_id, {SERVICE_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                             ?16, ?17, ?18)"
                ),
                params![
                    self.account_id(),
                    row.service_id,
                    row.name,
                    row.service_type,
                    row.http_port,
                    row.https_port,
                    row.tcp_port,
                    row.app_protocol,
                    row.hostname,
                    row.resolver_ips,
                    row.ipv4,
                    row.ipv6,
                    row.tunnel_id,
                    row.cert_verification_mode,
                    row.created_at,
                    row.updated_at,
                    row.ca_certificate,
                    row.virtual_network_id
                ],
            )?;
            Ok(service)
        })?;
        tracing::debug!(service_id = %service.service_id, name = service.name, "VPC service created");
        Ok(service)
    }

    /// The account's services, oldest first, optionally only one type.
    pub fn list_services(
        &self,
        filter: Option<ServiceType>,
    ) -> Result<Vec<Service>, DirectoryError> {
        self.read(|conn| {
            let rows = conn.query_map(
                &format!(
                    "SELECT {SERVICE_COLUMNS} FROM services
                 WHERE account_id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR type = ?2)
                 ORDER BY created_at, service_id"
                ),
                params![self.account_id(), filter.map(ServiceType::as_str)],
                ServiceRow::from_row,
            )?;
            rows.into_iter().map(|row| row.into_service()).collect()
        })
    }

    /// The service with this id, if it is in the account.
    pub fn service(&self, id: Uuid) -> Result<Option<Service>, DirectoryError> {
        self.read(|conn| find_service(conn, self.account_id(), id))
    }

    /// Replaces every field of a service (HTTP PUT semantics: `type` and `host` may change);
    /// keeps `service_id` and `created_at`.
    pub fn replace_service(
        &self,
        id: Uuid,
        input: &ServiceInput,
    ) -> Result<Service, DirectoryError> {
        let service = self.write(|tx| {
            let existing = find_service(tx, self.account_id(), id)?
                .ok_or(DirectoryError::ServiceNotFound(id))?;
            let spec = validate_in(tx, self.account_id(), input)?;
            let service = spec.into_service(id, existing.created_at, now_rfc3339());
            let row = ServiceRow::from_service(&service)?;
            tx.execute(
                "UPDATE services SET name = ?2, type = ?3, http_port = ?4, https_port = ?5,
                   tcp_port = ?6, app_protocol = ?7, hostname = ?8, resolver_ips = ?9, ipv4 = ?10,
                   ipv6 = ?11, tunnel_id = ?12, cert_verification_mode = ?13, updated_at = ?14,
                   ca_certificate = ?16, virtual_network_id = ?17
                 WHERE service_id = ?1 AND account_id = ?15",
                params![
                    row.service_id,
                    row.name,
                    row.service_type,
                    row.http_port,
                    row.https_port,
                    row.tcp_port,
                    row.app_protocol,
                    row.hostname,
                    row.resolver_ips,
                    row.ipv4,
                    row.ipv6,
                    row.tunnel_id,
                    row.cert_verification_mode,
                    row.updated_at,
                    self.account_id(),
                    row.ca_certificate,
                    row.virtual_network_id
                ],
            )?;
            Ok(service)
        })?;
        tracing::debug!(service_id = %id, name = service.name, "VPC service replaced");
        Ok(service)
    }

    /// Deletes a service.
    pub fn delete_service(&self, id: Uuid) -> Result<(), DirectoryError> {
        self.write(|tx| {
            let deleted = tx.execute(
                "DELETE FROM services WHERE service_id = ?1 AND account_id = ?2",
                [id.to_string(), self.account_id().to_owned()],
            )?;
            if deleted == 0 {
                return Err(DirectoryError::ServiceNotFound(id));
            }
            Ok(())
        })?;
        tracing::debug!(service_id = %id, "VPC service deleted");
        Ok(())
    }
}

/// Full validation inside the write transaction, so the tunnel (or virtual network, or
/// route) cannot vanish in between.
fn validate_in(
    tx: &Tx<'_>,
    account: &str,
    input: &ServiceInput,
) -> Result<ServiceSpec, DirectoryError> {
    let tunnels: HashSet<Uuid> = tunnel_ids(tx, account)?.into_iter().collect();
    let spec = validate(input, &|id| tunnels.contains(&id))?;
    check_virtual_network(tx, account, &spec)?;
    Ok(spec)
}

/// A `virtual_network_id` must be a virtual network of the account, and for an IP host the
/// service's tunnel must have a route in it covering each address (else the service would
/// name a network its traffic does not go through).
fn check_virtual_network(
    tx: &Tx<'_>,
    account: &str,
    spec: &ServiceSpec,
) -> Result<(), DirectoryError> {
    let (path, vnet) = match &spec.host {
        Host::Hostname {
            resolver_network, ..
        } => (
            "host.resolver_network.virtual_network_id",
            resolver_network.virtual_network_id,
        ),
        Host::Ip { network, .. } => (
            "host.network.virtual_network_id",
            network.virtual_network_id,
        ),
    };
    let Some(vnet) = vnet else { return Ok(()) };
    let problem = |message: String| {
        DirectoryError::Invalid(crate::validation::ValidationError {
            problems: vec![crate::validation::Problem {
                path: path.to_owned(),
                message,
            }],
        })
    };
    let Some(found) = crate::teamnet::find_vnet(tx, account, vnet)? else {
        return Err(problem(format!(
            "no virtual network {vnet} in this account; use an id that `wvpc vnet list` prints"
        )));
    };
    if let Host::Ip {
        ipv4,
        ipv6,
        network,
    } = &spec.host
    {
        let routes = crate::teamnet::tunnel_routes_in(tx, account, vnet, network.tunnel_id)?;
        let uncovered: Vec<String> = ipv4
            .map(std::net::IpAddr::from)
            .into_iter()
            .chain(ipv6.map(std::net::IpAddr::from))
            .filter(|ip| !routes.iter().any(|net| net.contains(ip)))
            .map(|ip| ip.to_string())
            .collect();
        if let Some(first) = uncovered.first() {
            let prefix = if first.contains(':') { 128 } else { 32 };
            return Err(problem(format!(
                "tunnel {} has no route in virtual network {:?} covering {}; add one (`wvpc \
                 route ip add {first}/{prefix} {} --vnet {}`) or name the virtual network that \
                 routes it",
                network.tunnel_id,
                found.name,
                uncovered.join(", "),
                network.tunnel_id,
                found.name
            )));
        }
    }
    Ok(())
}

fn find_service(conn: &Tx<'_>, account: &str, id: Uuid) -> Result<Option<Service>, DirectoryError> {
    conn.query_opt(
        &format!(
            "SELECT {SERVICE_COLUMNS} FROM services WHERE service_id = ?1 AND account_id = ?2"
        ),
        [id.to_string(), account.to_owned()],
        ServiceRow::from_row,
    )?
    .map(ServiceRow::into_service)
    .transpose()
}

/// Every service of every account, oldest first (the routing snapshot).
pub(crate) fn all_services(conn: &Tx<'_>) -> Result<Vec<Service>, DirectoryError> {
    let rows = conn.query_map(
        &format!("SELECT {SERVICE_COLUMNS} FROM services ORDER BY created_at, service_id"),
        params![],
        ServiceRow::from_row,
    )?;
    rows.into_iter().map(|row| row.into_service()).collect()
}

impl ServiceSpec {
    fn into_service(self, service_id: Uuid, created_at: String, updated_at: String) -> Service {
        Service {
            service_id,
            name: self.name,
            kind: self.kind,
            host: self.host,
            tls_settings: self.tls_settings,
            created_at,
            updated_at,
        }
    }
}

/// A `services` row, column for column.
struct ServiceRow {
    service_id: String,
    name: String,
    service_type: String,
    http_port: Option<u16>,
    https_port: Option<u16>,
    tcp_port: Option<u16>,
    app_protocol: Option<String>,
    hostname: Option<String>,
    resolver_ips: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    tunnel_id: String,
    cert_verification_mode: Option<String>,
    created_at: String,
    updated_at: String,
    ca_certificate: Option<String>,
    virtual_network_id: Option<String>,
}

impl ServiceRow {
    fn from_row(row: &Row) -> Result<Self, DirectoryError> {
        Ok(Self {
            service_id: row.get(0)?,
            name: row.get(1)?,
            service_type: row.get(2)?,
            http_port: row.get(3)?,
            https_port: row.get(4)?,
            tcp_port: row.get(5)?,
            app_protocol: row.get(6)?,
            hostname: row.get(7)?,
            resolver_ips: row.get(8)?,
            ipv4: row.get(9)?,
            ipv6: row.get(10)?,
            tunnel_id: row.get(11)?,
            cert_verification_mode: row.get(12)?,
            created_at: row.get(13)?,
            updated_at: row.get(14)?,
            ca_certificate: row.get(15)?,
            virtual_network_id: row.get(16)?,
        })
    }

    fn from_service(s: &Service) -> Result<Self, DirectoryError> {
        let (http_port, https_port, tcp_port, app_protocol) = match s.kind {
            ServiceKind::Http {
                http_port,
                https_port,
                tcp_port,
            } => (http_port, https_port, tcp_port, None),
            ServiceKind::Tcp {
                tcp_port,
                app_protocol,
            } => (
                None,
                None,
                Some(tcp_port),
                app_protocol.map(|p| p.as_str().to_owned()),
            ),
        };
        let (hostname, resolver_ips, ipv4, ipv6) = match &s.host {
            Host::Hostname {
                hostname,
                resolver_network,
            } => {
                let ips = resolver_network
                    .resolver_ips
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(|e| DirectoryError::Corrupt {
                        what: "resolver_ips".into(),
                        detail: e.to_string(),
                    })?;
                (Some(hostname.clone()), ips, None, None)
            }
            Host::Ip { ipv4, ipv6, .. } => (
                None,
                None,
                ipv4.map(|ip| ip.to_string()),
                ipv6.map(|ip| ip.to_string()),
            ),
        };
        Ok(Self {
            service_id: s.service_id.to_string(),
            name: s.name.clone(),
            service_type: s.service_type().as_str().to_owned(),
            http_port,
            https_port,
            tcp_port,
            app_protocol,
            hostname,
            resolver_ips,
            ipv4,
            ipv6,
            tunnel_id: s.tunnel_id().to_string(),
            cert_verification_mode: s
                .tls_settings
                .as_ref()
                .map(|t| t.cert_verification_mode.as_str().to_owned()),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            ca_certificate: s.ca_certificate().map(str::to_owned),
            virtual_network_id: s.virtual_network_id().map(|v| v.to_string()),
        })
    }

    fn into_service(self) -> Result<Service, DirectoryError> {
        let what = format!("service {}", self.service_id);
        let corrupt = |detail: String| DirectoryError::Corrupt {
            what: what.clone(),
            detail,
        };
        let service_id = parse_uuid("service id", &self.service_id)?;
        let tunnel_id = parse_uuid("tunnel id", &self.tunnel_id)?;
        let virtual_network_id = self
            .virtual_network_id
            .as_deref()
            .map(|v| parse_uuid("virtual network id", v))
            .transpose()?;
        let kind = match ServiceType::parse(&self.service_type) {
            Some(ServiceType::Http) => ServiceKind::Http {
                http_port: self.http_port,
                https_port: self.https_port,
                tcp_port: self.tcp_port,
            },
            Some(ServiceType::Tcp) => ServiceKind::Tcp {
                tcp_port: self
                    .tcp_port
                    .ok_or_else(|| corrupt("tcp service without tcp_port".into()))?,
                app_protocol: self
                    .app_protocol
                    .map(|p| {
                        AppProtocol::parse(&p).ok_or_else(|| corrupt(format!("app_protocol {p:?}")))
                    })
                    .transpose()?,
            },
            None => return Err(corrupt(format!("type {:?}", self.service_type))),
        };
        let host = match self.hostname {
            Some(hostname) => Host::Hostname {
                hostname,
                resolver_network: ResolverNetwork {
                    virtual_network_id,
                    tunnel_id,
                    resolver_ips: self
                        .resolver_ips
                        .map(|json| {
                            serde_json::from_str(&json)
                                .map_err(|e| corrupt(format!("resolver_ips: {e}")))
                        })
                        .transpose()?,
                },
            },
            None => Host::Ip {
                ipv4: self
                    .ipv4
                    .map(|ip| ip.parse().map_err(|_| corrupt(format!("ipv4 {ip:?}"))))
                    .transpose()?,
                ipv6: self
                    .ipv6
                    .map(|ip| ip.parse().map_err(|_| corrupt(format!("ipv6 {ip:?}"))))
                    .transpose()?,
                network: Network {
                    tunnel_id,
                    virtual_network_id,
                },
            },
        };
        let ca_certificate = self.ca_certificate;
        let tls_settings = self
            .cert_verification_mode
            .map(|m| {
                CertVerificationMode::parse(&m)
                    .map(|mode| TlsSettings {
                        cert_verification_mode: mode,
                        ca_certificate,
                    })
                    .ok_or_else(|| corrupt(format!("cert_verification_mode {m:?}")))
            })
            .transpose()?;
        Ok(Service {
            service_id,
            name: self.name,
            kind,
            host,
            tls_settings,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;
    use crate::service_input::{HostInput, ResolverNetworkInput, TlsSettingsInput};

    both_backends! {
    #[test]
    fn create_get_list_replace_delete(state) {
        let dir = state.open();
        let (tunnel, _) = dir.create_tunnel("home").unwrap();

        let mut input = ServiceInput::http(
            "api",
            HostInput {
                hostname: Some("api.internal".into()),
                resolver_network: Some(ResolverNetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(tunnel.id.to_string()),
                    resolver_ips: Some(vec!["10.0.0.53".into(), "[::1]:5353".into()]),
                }),
                ..HostInput::default()
            },
        );
        let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()])
            .unwrap()
            .cert
            .pem();
        input.tls_settings = Some(TlsSettingsInput {
            cert_verification_mode: Some("verify_ca".into()),
            ca_certificate: Some(ca.clone()),
        });
        let api = dir.create_service(&input).unwrap();
        assert_eq!(
            api.ca_certificate(),
            Some(ca.as_str()),
            "the private CA is kept"
        );
        assert_eq!(api.name, "api");
        assert_eq!((api.http_port(), api.https_port()), (Some(80), Some(443)));
        assert_eq!(api.created_at, api.updated_at);
        assert_eq!(dir.service(api.service_id).unwrap(), Some(api.clone()));

        let db = dir
            .create_service(&ServiceInput::tcp(
                "db",
                5432,
                HostInput::ips(Some(Ipv4Addr::new(10, 0, 0, 5)), None, tunnel.id),
            ))
            .unwrap();
        assert_eq!(
            dir.list_services(None).unwrap(),
            vec![api.clone(), db.clone()]
        );
        assert_eq!(
            dir.list_services(Some(ServiceType::Http)).unwrap(),
            vec![api.clone()]
        );
        assert_eq!(
            dir.list_services(Some(ServiceType::Tcp)).unwrap(),
            vec![db.clone()]
        );

        // Full replace: the type and host change in place; id and created_at stay.
        let replaced = dir
            .replace_service(
                api.service_id,
                &ServiceInput::tcp(
                    "api-db",
                    3306,
                    HostInput::hostname("db.internal", tunnel.id),
                ),
            )
            .unwrap();
        assert_eq!(replaced.service_id, api.service_id);
        assert_eq!(replaced.created_at, api.created_at);
        assert!(replaced.updated_at >= api.updated_at);
        assert_eq!(replaced.tcp_port(), Some(3306));
        assert_eq!(
            replaced.tls_settings, None,
            "replace drops fields not given again"
        );
        assert_eq!(dir.service(api.service_id).unwrap(), Some(replaced.clone()));

        // Round trip through the input form.
        let same = dir
            .replace_service(db.service_id, &ServiceInput::from(&db))
            .unwrap();
        assert_eq!(
            (same.kind, same.host.clone(), same.name.clone()),
            (db.kind, db.host.clone(), db.name.clone())
        );

        dir.delete_service(api.service_id).unwrap();
        assert_eq!(dir.service(api.service_id).unwrap(), None);
        assert!(matches!(
            dir.delete_service(api.service_id),
            Err(DirectoryError::ServiceNotFound(_))
        ));
        assert!(matches!(
            dir.replace_service(api.service_id, &ServiceInput::from(&db)),
            Err(DirectoryError::ServiceNotFound(_))
        ));
        assert_eq!(dir.list_services(None).unwrap(), vec![same]);
    }
    }

    both_backends! {
    #[test]
    fn invalid_input_and_unknown_tunnels_change_nothing(state) {
        let dir = state.open();
        let before = dir.revision().unwrap();
        let err = dir
            .create_service(&ServiceInput::http(
                "api",
                HostInput::hostname("api.internal", Uuid::new_v4()),
            ))
            .unwrap_err();
        let DirectoryError::Invalid(v) = err else {
            panic!("expected a validation error, got {err}")
        };
        assert_eq!(v.problems.len(), 1);
        assert_eq!(v.problems[0].path, "host.resolver_network.tunnel_id");
        assert!(dir.list_services(None).unwrap().is_empty());
        assert_eq!(
            dir.revision().unwrap(),
            before,
            "a failed write does not count as a change"
        );
    }
    }

    both_backends! {
    #[test]
    fn the_account_limit_is_enforced(state) {
        let dir = state.open();
        let (tunnel, _) = dir.create_tunnel("home").unwrap();
        let first = dir
            .create_service(&ServiceInput::http(
                "s",
                HostInput::hostname("s.internal", tunnel.id),
            ))
            .unwrap();
        // Fill up to the limit in one transaction (one fsync instead of a thousand).
        dir.write(|tx| {
            for _ in 1..SERVICE_LIMIT {
                tx.execute(
                    &format!(
                        "INSERT INTO services (account_id, {SERVICE_COLUMNS})
                         SELECT account_id, ?1, name, type, http_port, https_port, tcp_port, app_protocol,
                           hostname, resolver_ips, ipv4, ipv6, tunnel_id, cert_verification_mode,
                           created_at, updated_at, ca_certificate, virtual_network_id
                         FROM services WHERE service_id = ?2"
                    ),
                    [Uuid::new_v4().to_string(), first.service_id.to_string()],
                )?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(dir.list_services(None).unwrap().len(), SERVICE_LIMIT);
        let err = dir
            .create_service(&ServiceInput::http(
                "one-too-many",
                HostInput::hostname("s.internal", tunnel.id),
            ))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DirectoryError::ServiceLimit {
                    limit: SERVICE_LIMIT
                }
            ),
            "{err}"
        );
        dir.delete_service(first.service_id).unwrap();
        assert!(
            dir.create_service(&ServiceInput::http(
                "fits",
                HostInput::hostname("s.internal", tunnel.id)
            ))
            .is_ok()
        );
    }
    }

    both_backends! {
    #[test]
    fn two_handles_on_one_file_see_each_other_and_do_not_lose_writes(state) {
        const PER_WRITER: usize = 25;
        let a = Arc::new(state.open());
        let b = Arc::new(state.open());
        assert_eq!(a.account_id(), b.account_id());
        let (tunnel, creds) = a.create_tunnel("home").unwrap();
        // b sees a's committed tunnel and can use it right away.
        b.authorize_tunnel(tunnel.id, &creds.account_tag, &creds.tunnel_secret)
            .unwrap();
        let revision_before = b.revision().unwrap();

        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(w, dir)| {
                std::thread::spawn(move || {
                    for i in 0..PER_WRITER {
                        let host = HostInput::hostname(format!("s{w}-{i}.internal"), tunnel.id);
                        dir.create_service(&ServiceInput::http(format!("w{w}-{i}"), host))
                            .unwrap();
                        // Interleave reads with the other writer's commits.
                        assert!(dir.list_services(None).unwrap().len() > i);
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }

        let from_a = a.list_services(None).unwrap();
        let from_b = b.list_services(None).unwrap();
        assert_eq!(from_a.len(), 2 * PER_WRITER);
        assert_eq!(from_a, from_b);
        let revision_after = a.revision().unwrap();
        assert_eq!(revision_after, revision_before + 2 * PER_WRITER as u64);

        // A delete through one handle is visible through the other.
        b.delete_service(from_a[0].service_id).unwrap();
        assert_eq!(a.service(from_a[0].service_id).unwrap(), None);
    }
    }

    both_backends! {
    #[test]
    fn a_service_may_name_a_virtual_network_that_routes_it(state) {
        let dir = state.open();
        let (office, _) = dir.create_tunnel("office").unwrap();
        let lab = dir
            .create_virtual_network(&crate::VirtualNetworkInput {
                name: Some("lab".into()),
                ..Default::default()
            })
            .unwrap();
        let mut input = ServiceInput::http(
            "db",
            HostInput::ips(Some(Ipv4Addr::new(10, 1, 2, 3)), None, office.id),
        );
        if let Some(network) = input.host.as_mut().and_then(|h| h.network.as_mut()) {
            network.virtual_network_id = Some(lab.id.to_string());
        }
        // No route of the tunnel in the lab covers the address yet.
        let err = dir.create_service(&input).unwrap_err().to_string();
        assert!(
            err.contains("host.network.virtual_network_id: tunnel")
                && err.contains("has no route in virtual network \"lab\" covering 10.1.2.3")
                && err.contains("wvpc route ip add 10.1.2.3/32"),
            "{err}"
        );
        dir.create_network_route(&crate::RouteInput {
            network: Some("10.1.0.0/16".into()),
            tunnel_id: Some(office.id.to_string()),
            virtual_network_id: Some(lab.id.to_string()),
            comment: None,
        })
        .unwrap();
        let service = dir.create_service(&input).unwrap();
        assert_eq!(service.virtual_network_id(), Some(lab.id));
        let json = serde_json::to_value(&service).unwrap();
        assert_eq!(
            json["host"]["network"]["virtual_network_id"],
            lab.id.to_string()
        );
        assert_eq!(dir.service(service.service_id).unwrap().unwrap(), service);
        // A virtual network a service names is in use.
        let err = dir.delete_virtual_network(lab.id).unwrap_err().to_string();
        assert!(err.contains("VPC service(s) \"db\""), "{err}");

        // Not a virtual network of this account.
        let other = dir.create_account("b").unwrap();
        let theirs = dir
            .for_account(&other.id)
            .unwrap()
            .unwrap()
            .default_virtual_network()
            .unwrap();
        let mut hostname =
            ServiceInput::http("api", HostInput::hostname("api.internal", office.id));
        if let Some(rn) = hostname
            .host
            .as_mut()
            .and_then(|h| h.resolver_network.as_mut())
        {
            rn.virtual_network_id = Some(theirs.id.to_string());
        }
        let err = dir.create_service(&hostname).unwrap_err().to_string();
        assert!(
            err.contains("host.resolver_network.virtual_network_id: no virtual network"),
            "{err}"
        );
        if let Some(rn) = hostname
            .host
            .as_mut()
            .and_then(|h| h.resolver_network.as_mut())
        {
            rn.virtual_network_id = Some("lab".into());
        }
        let err = dir.create_service(&hostname).unwrap_err().to_string();
        assert!(err.contains("\"lab\" is not a virtual network id"), "{err}");
    }
    }

    both_backends! {
    #[test]
    fn an_http_service_may_have_a_tcp_port_and_tcp_services_their_protocol(state) {
        let dir = state.open();
        let (office, _) = dir.create_tunnel("office").unwrap();
        let plain = dir
            .create_service(&ServiceInput::http(
                "web",
                HostInput::hostname("web.internal", office.id),
            ))
            .unwrap();
        assert_eq!(plain.tcp_port(), None);
        assert!(
            serde_json::to_value(&plain)
                .unwrap()
                .get("tcp_port")
                .is_none(),
            "shown only when set"
        );

        let mut input = ServiceInput::http("web", HostInput::hostname("web.internal", office.id));
        input.tcp_port = Some(2222);
        let web = dir.create_service(&input).unwrap();
        assert_eq!((web.http_port(), web.tcp_port()), (Some(80), Some(2222)));
        assert_eq!(serde_json::to_value(&web).unwrap()["tcp_port"], 2222);
        assert_eq!(dir.service(web.service_id).unwrap().unwrap(), web);
        input.app_protocol = Some("postgresql".into());
        let err = dir.create_service(&input).unwrap_err().to_string();
        assert!(
            err.contains("app_protocol: only tcp services have an app_protocol"),
            "{err}"
        );

        let mut db = ServiceInput::http("db", HostInput::hostname("db.internal", office.id));
        db.service_type = Some("tcp".into());
        db.tcp_port = Some(5432);
        db.app_protocol = Some("postgresql".into());
        let db = dir.create_service(&db).unwrap();
        assert_eq!(db.tcp_port(), Some(5432));
        let json = serde_json::to_value(&db).unwrap();
        assert_eq!(
            (json["type"].clone(), json["app_protocol"].clone()),
            ("tcp".into(), "postgresql".into())
        );
    }
    }
}

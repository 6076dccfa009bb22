//! Every rule a service must satisfy, checked in one pass so that all problems are reported
//! together, each with the field path it is about and what to do.
//!
//! Rules (spec §1.2, §1.5, plus the decisions noted):
//! - `name` is required and not blank.
//! - `type` is `http` or `tcp`.
//! - Ports are 1..=65535. `http_port`/`https_port` only for `http`; `tcp_port` required for
//!   `tcp` and optional for `http` (the port `connect()` dials on it); `app_protocol`
//!   (`postgresql`|`mysql`) only for `tcp`.
//! - `network.virtual_network_id` / `resolver_network.virtual_network_id`, when given, are
//!   UUIDs; the directory checks they name a virtual network of the account and, for an IP
//!   host, that the tunnel has a route there covering each address.
//! - An `http` service that sets neither port gets 80 and 443; one that sets only one port
//!   allows only that scheme (the other is stored as `null`).
//! - `host` has either `hostname` with `resolver_network`, or `ipv4` and/or `ipv6` with
//!   `network` (dual stack is allowed, as in the API).
//! - `hostname`: not empty, at most 253 characters, no scheme, path, port, whitespace or bare
//!   IP; letters, digits, `-`, `_` and `.` only, labels of 1..=63 characters (an optional
//!   trailing dot is allowed).
//! - `resolver_ips` entries are `ip`, `ip:port` or `[ipv6]:port` (port 53 when absent).
//! - `tunnel_id` is a UUID of an existing tunnel of the account (the existence check is done
//!   by the directory, which knows the tunnels).
//! - `tls_settings`, when given, has a `cert_verification_mode` of `verify_full`, `verify_ca`
//!   or `disabled`, and optionally a `ca_certificate`: PEM text of one or more X.509
//!   certificates (a private CA trusted besides the system roots), pointless with `disabled`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use uuid::Uuid;

use crate::service::{
    AppProtocol, CertVerificationMode, DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT, Host, Network,
    ResolverAddrError, ResolverNetwork, ServiceKind, ServiceType, TlsSettings, parse_resolver_addr,
};
use crate::service_input::{HostInput, ServiceInput};

/// Longest hostname accepted (DNS limit for the text form).
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A service input that broke one or more rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid VPC service: {}", display_problems(.problems))]
pub struct ValidationError {
    /// Every problem found, in field order.
    pub problems: Vec<Problem>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a JSON path: `host.ipv4`, `host.resolver_network.resolver_ips[1]`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A service that passed validation: everything but the id and timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Name (trimmed).
    pub name: String,
    /// Type and ports, with the port defaults applied.
    pub kind: ServiceKind,
    /// Host and tunnel.
    pub host: Host,
    /// TLS settings as given.
    pub tls_settings: Option<TlsSettings>,
}

impl ServiceInput {
    /// Checks every rule except that the tunnel exists (see [`crate::Directory::create_service`]).
    pub fn validate(&self) -> Result<ServiceSpec, ValidationError> {
        validate(self, &|_| true)
    }
}

/// Checks `input`; `tunnel_exists` answers whether a well-formed tunnel id names a tunnel.
pub(crate) fn validate(
    input: &ServiceInput,
    tunnel_exists: &dyn Fn(Uuid) -> bool,
) -> Result<ServiceSpec, ValidationError> {
    let mut p = Problems::default();

    let name = match input.name.as_deref().map(str::trim) {
        None => p.none("name", "required; give the service a name"),
        Some("") => p.none("name", "must not be empty; give the service a name"),
        Some(n) if n.chars().any(char::is_control) => p.none(
            "name",
            "must not contain control characters (newlines, tabs, ...)",
        ),
        Some(n) => Some(n.to_owned()),
    };

    let service_type = match input.service_type.as_deref() {
        None => p.none("type", "required; use \"http\" or \"tcp\""),
        Some(t) => ServiceType::parse(t).or_else(|| {
            p.none(
                "type",
                format!("{t:?} is not a service type; use \"http\" or \"tcp\""),
            )
        }),
    };

    let http_port = port_field(&mut p, "http_port", input.http_port);
    let https_port = port_field(&mut p, "https_port", input.https_port);
    let tcp_port = port_field(&mut p, "tcp_port", input.tcp_port);
    let app_protocol = match input.app_protocol.as_deref() {
        None => None,
        Some(a) => AppProtocol::parse(a).or_else(|| {
            p.none(
                "app_protocol",
                format!(
                    "{a:?} is not an app protocol; use \"postgresql\" or \"mysql\", or omit it"
                ),
            )
        }),
    };

    let kind = match service_type {
        Some(ServiceType::Http) => {
            if input.app_protocol.is_some() {
                p.push(
                    "app_protocol",
                    "only tcp services have an app_protocol; remove it, or set type to \"tcp\"",
                );
            }
            match (http_kind(http_port, https_port), tcp_port) {
                (_, Port::Invalid) => None,
                (
                    Some(ServiceKind::Http {
                        http_port,
                        https_port,
                        ..
                    }),
                    tcp_port,
                ) => Some(ServiceKind::Http {
                    http_port,
                    https_port,
                    tcp_port: tcp_port.valid(),
                }),
                (kind, _) => kind,
            }
        }
        Some(ServiceType::Tcp) => {
            for (field, port) in [("http_port", http_port), ("https_port", https_port)] {
                if port.is_given() {
                    p.push(
                        field,
                        format!("only http services have an {field}; remove it and use tcp_port"),
                    );
                }
            }
            match tcp_port {
                Port::Absent => p.none(
                    "tcp_port",
                    "required for tcp services; give the port the service listens on (1..=65535)",
                ),
                Port::Invalid => None,
                Port::Valid(port) => Some(ServiceKind::Tcp {
                    tcp_port: port,
                    app_protocol,
                }),
            }
        }
        None => None,
    };

    let host = match &input.host {
        None => p.none(
            "host",
            "required; give {\"hostname\", \"resolver_network\": {\"tunnel_id\"}} or \
             {\"ipv4\" and/or \"ipv6\", \"network\": {\"tunnel_id\"}}",
        ),
        Some(h) => host(&mut p, h, service_type, tunnel_exists),
    };

    let tls_settings = match &input.tls_settings {
        None => None,
        Some(t) => {
            let mode = match t.cert_verification_mode.as_deref() {
                None => p.none(
                    "tls_settings.cert_verification_mode",
                    "required when tls_settings is given; use \"verify_full\", \"verify_ca\" or \
                     \"disabled\", or omit tls_settings for verify_full",
                ),
                Some(m) => CertVerificationMode::parse(m).or_else(|| {
                    p.none(
                        "tls_settings.cert_verification_mode",
                        format!(
                            "{m:?} is not a verification mode; use \"verify_full\", \"verify_ca\" \
                             or \"disabled\""
                        ),
                    )
                }),
            };
            let ca_certificate = match t.ca_certificate.as_deref() {
                None => None,
                Some(_) if mode == Some(CertVerificationMode::Disabled) => p.none(
                    "tls_settings.ca_certificate",
                    "has no effect when cert_verification_mode is \"disabled\"; remove it, or \
                     use \"verify_ca\" or \"verify_full\"",
                ),
                Some(pem) => match check_ca_certificate(pem) {
                    Ok(()) => Some(pem.to_owned()),
                    Err(why) => p.none("tls_settings.ca_certificate", why),
                },
            };
            mode.map(|cert_verification_mode| TlsSettings {
                cert_verification_mode,
                ca_certificate,
            })
        }
    };

    match (p.0.is_empty(), name, kind, host) {
        (true, Some(name), Some(kind), Some(host)) => Ok(ServiceSpec {
            name,
            kind,
            host,
            tls_settings,
        }),
        _ => Err(ValidationError { problems: p.0 }),
    }
}

/// Checks that `pem` holds one or more X.509 certificates usable as trust anchors, and
/// nothing else.
fn check_ca_certificate(pem: &str) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::{PemObject, SectionKind};
    let mut found = 0;
    for (index, section) in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()).enumerate() {
        match section {
            Err(e) => {
                return Err(format!(
                    "is not valid PEM ({e}); paste the CA certificate as \
                 \"-----BEGIN CERTIFICATE-----\" ... \"-----END CERTIFICATE-----\""
                ));
            }
            Ok((SectionKind::Certificate, der)) => {
                let mut store = rustls::RootCertStore::empty();
                store.add(CertificateDer::from(der)).map_err(|e| {
                    format!(
                        "PEM block {} is not a usable X.509 CA certificate: {e}",
                        index + 1
                    )
                })?;
                found += 1;
            }
            Ok((kind, _)) => {
                return Err(format!(
                    "PEM block {} is a {kind:?}, not a certificate; give only the CA's \
                     certificate (never a private key)",
                    index + 1
                ));
            }
        }
    }
    if found == 0 {
        return Err("holds no PEM certificate; paste the CA certificate as \
             \"-----BEGIN CERTIFICATE-----\" ... \"-----END CERTIFICATE-----\""
            .to_owned());
    }
    Ok(())
}

/// Ports of an http service: 80/443 when neither is given; otherwise only the given scheme(s).
fn http_kind(http_port: Port, https_port: Port) -> Option<ServiceKind> {
    match (http_port, https_port) {
        (Port::Invalid, _) | (_, Port::Invalid) => None,
        (Port::Absent, Port::Absent) => Some(ServiceKind::Http {
            http_port: Some(DEFAULT_HTTP_PORT),
            https_port: Some(DEFAULT_HTTPS_PORT),
            tcp_port: None,
        }),
        (http, https) => Some(ServiceKind::Http {
            http_port: http.valid(),
            https_port: https.valid(),
            tcp_port: None,
        }),
    }
}

fn host(
    p: &mut Problems,
    h: &HostInput,
    service_type: Option<ServiceType>,
    tunnel_exists: &dyn Fn(Uuid) -> bool,
) -> Option<Host> {
    let hostname = h
        .hostname
        .as_deref()
        .and_then(|name| hostname(p, name, service_type));
    let ipv4 = h.ipv4.as_deref().and_then(|ip| ipv4(p, ip));
    let ipv6 = h.ipv6.as_deref().and_then(|ip| ipv6(p, ip));
    let network_vnet = h.network.as_ref().and_then(|n| {
        vnet_id(
            p,
            "host.network.virtual_network_id",
            n.virtual_network_id.as_deref(),
        )
    });
    let resolver_vnet = h.resolver_network.as_ref().and_then(|rn| {
        vnet_id(
            p,
            "host.resolver_network.virtual_network_id",
            rn.virtual_network_id.as_deref(),
        )
    });
    let network_tunnel = h.network.as_ref().and_then(|n| {
        tunnel_id(
            p,
            "host.network.tunnel_id",
            n.tunnel_id.as_deref(),
            tunnel_exists,
        )
    });
    let resolver_network = h.resolver_network.as_ref().and_then(|rn| {
        let tunnel = tunnel_id(
            p,
            "host.resolver_network.tunnel_id",
            rn.tunnel_id.as_deref(),
            tunnel_exists,
        );
        let ips_ok = resolver_ips(p, rn.resolver_ips.as_deref().unwrap_or_default());
        match (tunnel, ips_ok) {
            (Some(tunnel_id), true) => Some(ResolverNetwork {
                virtual_network_id: resolver_vnet,
                tunnel_id,
                resolver_ips: rn.resolver_ips.clone(),
            }),
            _ => None,
        }
    });

    let has_name = h.hostname.is_some();
    let has_ip = h.ipv4.is_some() || h.ipv6.is_some();
    match (has_name, has_ip) {
        (true, true) => p.none(
            "host",
            "hostname and ipv4/ipv6 are mutually exclusive; use either hostname (with \
             resolver_network) or ipv4/ipv6 (with network), not both",
        ),
        (false, false) => p.none(
            "host",
            "give either hostname (with resolver_network) or ipv4 and/or ipv6 (with network)",
        ),
        (true, false) => {
            if h.network.is_some() {
                p.push(
                    "host.network",
                    "a hostname host uses resolver_network, not network; move tunnel_id into \
                     resolver_network",
                );
            }
            if h.resolver_network.is_none() {
                p.push(
                    "host.resolver_network",
                    "required with hostname; give {\"tunnel_id\": \"<uuid>\"} and optionally \
                     \"resolver_ips\"",
                );
            }
            match (hostname, resolver_network, h.network.is_some()) {
                (Some(hostname), Some(resolver_network), false) => Some(Host::Hostname {
                    hostname,
                    resolver_network,
                }),
                _ => None,
            }
        }
        (false, true) => {
            if h.resolver_network.is_some() {
                p.push(
                    "host.resolver_network",
                    "an ipv4/ipv6 host uses network, not resolver_network (resolver_ips only \
                     apply to hostname hosts); move tunnel_id into network",
                );
            }
            if h.network.is_none() {
                p.push(
                    "host.network",
                    "required with ipv4/ipv6; give {\"tunnel_id\": \"<uuid>\"}",
                );
            }
            let ips_ok = h.ipv4.is_some() == ipv4.is_some() && h.ipv6.is_some() == ipv6.is_some();
            match (ips_ok, network_tunnel, h.resolver_network.is_some()) {
                (true, Some(tunnel_id), false) => Some(Host::Ip {
                    ipv4,
                    ipv6,
                    network: Network {
                        tunnel_id,
                        virtual_network_id: network_vnet,
                    },
                }),
                _ => None,
            }
        }
    }
}

fn hostname(p: &mut Problems, raw: &str, service_type: Option<ServiceType>) -> Option<String> {
    const PATH: &str = "host.hostname";
    let before = p.0.len();
    if raw.is_empty() {
        return p.none(PATH, "must not be empty");
    }
    if raw.len() > MAX_HOSTNAME_LEN {
        p.push(
            PATH,
            format!(
                "is {} characters long; a hostname has at most {MAX_HOSTNAME_LEN}",
                raw.len()
            ),
        );
    }
    if raw.chars().any(char::is_whitespace) {
        p.push(PATH, format!("{raw:?} contains whitespace; remove it"));
    }
    let mut rest = raw;
    if let Some((scheme, after)) = rest.split_once("://") {
        let bare = after.split(['/', ':']).next().unwrap_or_default();
        p.push(
            PATH,
            format!(
                "{raw:?} contains a scheme ({scheme}://); give only the host name, e.g. {bare:?}"
            ),
        );
        rest = after;
    }
    if let Some((host_part, _)) = rest.split_once('/') {
        p.push(
            PATH,
            format!("{raw:?} contains a path; give only the host name, e.g. {host_part:?}"),
        );
        rest = host_part;
    }
    let unbracketed = rest
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(rest);
    if rest.parse::<Ipv4Addr>().is_ok() {
        p.push(
            PATH,
            format!("{rest:?} is an IPv4 address, not a hostname; set host.ipv4 with host.network instead"),
        );
    } else if unbracketed.parse::<Ipv6Addr>().is_ok() {
        p.push(
            PATH,
            format!("{rest:?} is an IPv6 address, not a hostname; set host.ipv6 with host.network instead"),
        );
    } else if let Ok(addr) = rest.parse::<SocketAddr>() {
        let field = if addr.is_ipv4() {
            "host.ipv4"
        } else {
            "host.ipv6"
        };
        p.push(
            PATH,
            format!(
                "{rest:?} is an IP address with a port; set {field} with host.network, and the \
                 port in {}",
                port_fields(service_type)
            ),
        );
    } else if let Some((name, port)) = rest.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        p.push(
            PATH,
            format!(
                "{raw:?} contains a port (:{port}); give only {name:?} and set the port in {}",
                port_fields(service_type)
            ),
        );
    }
    // Character and label rules only make sense once the structure is right.
    if p.0.len() == before {
        let labels = raw.strip_suffix('.').unwrap_or(raw);
        if let Some(c) = labels
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            p.push(
                PATH,
                format!(
                    "{raw:?} contains {c:?}; a hostname has only letters, digits, '-', '_' and '.' \
                     (write international names in punycode, xn--...)"
                ),
            );
        } else if labels.split('.').any(str::is_empty) {
            p.push(
                PATH,
                format!("{raw:?} has an empty label (\"..\" or a leading dot)"),
            );
        } else if let Some(label) = labels.split('.').find(|l| l.len() > MAX_LABEL_LEN) {
            p.push(
                PATH,
                format!(
                    "label {label:?} is {} characters long; a label has at most {MAX_LABEL_LEN}",
                    label.len()
                ),
            );
        }
    }
    (p.0.len() == before).then(|| raw.to_owned())
}

fn port_fields(service_type: Option<ServiceType>) -> &'static str {
    match service_type {
        Some(ServiceType::Tcp) => "tcp_port",
        Some(ServiceType::Http) => "http_port/https_port",
        None => "http_port/https_port (http) or tcp_port (tcp)",
    }
}

fn ipv4(p: &mut Problems, raw: &str) -> Option<Ipv4Addr> {
    match raw.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Some(ip),
        Ok(IpAddr::V6(_)) => p.none(
            "host.ipv4",
            format!("{raw:?} is an IPv6 address; put it in host.ipv6"),
        ),
        Err(_) => p.none(
            "host.ipv4",
            format!(
                "{raw:?} is not an IPv4 address; give one like 10.0.0.1 (no port, no brackets)"
            ),
        ),
    }
}

fn ipv6(p: &mut Problems, raw: &str) -> Option<Ipv6Addr> {
    match raw.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => Some(ip),
        Ok(IpAddr::V4(_)) => p.none(
            "host.ipv6",
            format!("{raw:?} is an IPv4 address; put it in host.ipv4"),
        ),
        Err(_) => p.none(
            "host.ipv6",
            format!("{raw:?} is not an IPv6 address; give one like fd00::1 (no port, no brackets)"),
        ),
    }
}

fn tunnel_id(
    p: &mut Problems,
    path: &str,
    raw: Option<&str>,
    tunnel_exists: &dyn Fn(Uuid) -> bool,
) -> Option<Uuid> {
    let Some(raw) = raw else {
        return p.none(
            path,
            "required; give the id of the tunnel that reaches this service",
        );
    };
    match Uuid::parse_str(raw) {
        Err(_) => p.none(path, format!("{raw:?} is not a tunnel id (a UUID)")),
        Ok(id) if !tunnel_exists(id) => p.none(
            path,
            format!("no tunnel {id} in this account; create one or pick one from the tunnel list"),
        ),
        Ok(id) => Some(id),
    }
}

/// A `virtual_network_id` as given: absent, or a UUID (whether it is a virtual network of the
/// account, and routes the host, is checked by the directory).
fn vnet_id(p: &mut Problems, path: &str, raw: Option<&str>) -> Option<Uuid> {
    let raw = raw?;
    match Uuid::parse_str(raw) {
        Ok(id) => Some(id),
        Err(_) => p.none(
            path,
            format!(
                "{raw:?} is not a virtual network id (a UUID, as `wvpc vnet list` prints); \
                 omit it for the tunnel's own network"
            ),
        ),
    }
}

/// Checks each entry; true when all are fine.
fn resolver_ips(p: &mut Problems, entries: &[String]) -> bool {
    let before = p.0.len();
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("host.resolver_network.resolver_ips[{i}]");
        match parse_resolver_addr(entry) {
            Ok(_) => {}
            Err(ResolverAddrError::PortZero(_)) => p.push(
                path,
                format!("{entry:?} has port 0; omit the port for 53 or give 1..=65535"),
            ),
            Err(ResolverAddrError::Syntax(_)) => p.push(
                path,
                format!(
                    "{entry:?} is not an IP address; give an IPv4 or IPv6 address, optionally \
                     with a port: 10.0.0.53, 10.0.0.53:5353, fd00::53, [fd00::53]:5353"
                ),
            ),
        }
    }
    p.0.len() == before
}

/// A port field after range checking.
#[derive(Debug, Clone, Copy)]
enum Port {
    Absent,
    Invalid,
    Valid(u16),
}

impl Port {
    fn is_given(self) -> bool {
        !matches!(self, Port::Absent)
    }

    fn valid(self) -> Option<u16> {
        match self {
            Port::Valid(port) => Some(port),
            Port::Absent | Port::Invalid => None,
        }
    }
}

fn port_field(p: &mut Problems, path: &str, raw: Option<i64>) -> Port {
    match raw {
        None => Port::Absent,
        Some(n) => match u16::try_from(n) {
            Ok(port) if port != 0 => Port::Valid(port),
            _ => {
                p.push(
                    path,
                    format!("{n} is not a port; use a number from 1 to 65535"),
                );
                Port::Invalid
            }
        },
    }
}

/// Collected problems.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records a problem and yields `None`, for `match` arms that produce no value.
    fn none<T>(&mut self, path: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.push(path, message);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_input::{NetworkInput, ResolverNetworkInput, TlsSettingsInput};

    fn tunnel() -> Uuid {
        Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888)
    }

    fn http_named(hostname: &str) -> ServiceInput {
        ServiceInput::http("api", HostInput::hostname(hostname, tunnel()))
    }

    fn http_ips(ipv4: Option<&str>, ipv6: Option<&str>) -> ServiceInput {
        ServiceInput::http(
            "api",
            HostInput {
                ipv4: ipv4.map(str::to_owned),
                ipv6: ipv6.map(str::to_owned),
                network: Some(NetworkInput {
                    virtual_network_id: None,
                    tunnel_id: Some(tunnel().to_string()),
                }),
                ..HostInput::default()
            },
        )
    }

    /// The problem paths, in order.
    fn paths(input: &ServiceInput) -> Vec<String> {
        match input.validate() {
            Ok(spec) => panic!("expected problems, got {spec:?}"),
            Err(e) => e.problems.into_iter().map(|p| p.path).collect(),
        }
    }

    fn message(input: &ServiceInput, path: &str) -> String {
        let err = input.validate().unwrap_err();
        err.problems
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {err}"))
            .message
            .clone()
    }

    #[test]
    fn a_minimal_http_service_gets_both_default_ports() {
        let spec = http_named("api.internal").validate().unwrap();
        assert_eq!(
            spec.kind,
            ServiceKind::Http {
                http_port: Some(80),
                https_port: Some(443),
                tcp_port: None,
            }
        );
        assert_eq!(
            spec.host,
            Host::Hostname {
                hostname: "api.internal".into(),
                resolver_network: ResolverNetwork {
                    virtual_network_id: None,
                    tunnel_id: tunnel(),
                    resolver_ips: None
                },
            }
        );
        assert_eq!(spec.tls_settings, None);
    }

    #[test]
    fn setting_one_http_port_disables_the_other_scheme() {
        let mut only_http = http_named("api.internal");
        only_http.http_port = Some(8080);
        assert_eq!(
            only_http.validate().unwrap().kind,
            ServiceKind::Http {
                http_port: Some(8080),
                https_port: None,
                tcp_port: None,
            }
        );
        let mut only_https = http_named("api.internal");
        only_https.https_port = Some(8443);
        assert_eq!(
            only_https.validate().unwrap().kind,
            ServiceKind::Http {
                http_port: None,
                https_port: Some(8443),
                tcp_port: None,
            }
        );
        let mut both = http_named("api.internal");
        both.http_port = Some(1);
        both.https_port = Some(65535);
        assert_eq!(
            both.validate().unwrap().kind,
            ServiceKind::Http {
                http_port: Some(1),
                https_port: Some(65535),
                tcp_port: None,
            }
        );
    }

    #[test]
    fn name_is_required_and_not_blank() {
        let mut input = http_named("api.internal");
        input.name = None;
        assert_eq!(paths(&input), ["name"]);
        input.name = Some("   ".into());
        assert_eq!(paths(&input), ["name"]);
        input.name = Some("a\nb".into());
        assert_eq!(paths(&input), ["name"]);
        input.name = Some("  padded  ".into());
        assert_eq!(input.validate().unwrap().name, "padded");
    }

    #[test]
    fn type_is_required_and_must_be_known() {
        let mut input = http_named("api.internal");
        input.service_type = None;
        assert_eq!(paths(&input), ["type"]);
        input.service_type = Some("udp".into());
        assert!(message(&input, "type").contains("\"udp\""));
    }

    #[test]
    fn ports_must_be_in_range() {
        for bad in [0, -1, 65536, i64::MAX] {
            let mut input = http_named("api.internal");
            input.http_port = Some(bad);
            input.https_port = Some(bad);
            assert_eq!(paths(&input), ["http_port", "https_port"], "port {bad}");
            assert!(message(&input, "http_port").contains(&bad.to_string()));
        }
        let mut tcp = ServiceInput::tcp("db", 5432, HostInput::hostname("db.internal", tunnel()));
        tcp.tcp_port = Some(70000);
        assert_eq!(paths(&tcp), ["tcp_port"]);
    }

    #[test]
    fn tcp_requires_tcp_port_and_refuses_http_ports() {
        let mut input = ServiceInput::tcp("db", 5432, HostInput::hostname("db.internal", tunnel()));
        input.tcp_port = None;
        input.http_port = Some(80);
        input.https_port = Some(443);
        assert_eq!(paths(&input), ["http_port", "https_port", "tcp_port"]);
        assert!(message(&input, "tcp_port").contains("required for tcp"));
    }

    #[test]
    fn app_protocol_only_for_tcp_and_an_http_tcp_port_in_range() {
        let mut input = http_named("api.internal");
        input.tcp_port = Some(5432);
        input.app_protocol = Some("postgresql".into());
        assert_eq!(paths(&input), ["app_protocol"]);
        input.app_protocol = None;
        input.tcp_port = Some(70000);
        assert_eq!(paths(&input), ["tcp_port"]);
    }

    #[test]
    fn app_protocol_values() {
        let mut input = ServiceInput::tcp("db", 5432, HostInput::hostname("db.internal", tunnel()));
        input.app_protocol = Some("mysql".into());
        assert_eq!(
            input.validate().unwrap().kind,
            ServiceKind::Tcp {
                tcp_port: 5432,
                app_protocol: Some(AppProtocol::Mysql)
            }
        );
        input.app_protocol = Some("redis".into());
        assert!(message(&input, "app_protocol").contains("\"redis\""));
    }

    #[test]
    fn host_is_required() {
        let mut input = http_named("api.internal");
        input.host = None;
        assert_eq!(paths(&input), ["host"]);
        input.host = Some(HostInput::default());
        assert_eq!(paths(&input), ["host"]);
    }

    #[test]
    fn hostname_and_ips_are_mutually_exclusive() {
        let mut input = http_named("api.internal");
        if let Some(h) = input.host.as_mut() {
            h.ipv4 = Some("10.0.0.1".into());
        }
        let msg = message(&input, "host");
        assert!(msg.contains("hostname") && msg.contains("ipv4"), "{msg}");
    }

    #[test]
    fn hostname_needs_resolver_network_and_ips_need_network() {
        let mut input = http_named("api.internal");
        if let Some(h) = input.host.as_mut() {
            h.network = h.resolver_network.take().map(|rn| NetworkInput {
                virtual_network_id: None,
                tunnel_id: rn.tunnel_id,
            });
        }
        assert_eq!(paths(&input), ["host.network", "host.resolver_network"]);

        let mut input = http_ips(Some("10.0.0.1"), None);
        if let Some(h) = input.host.as_mut() {
            h.resolver_network = h.network.take().map(|n| ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: n.tunnel_id,
                resolver_ips: None,
            });
        }
        assert_eq!(paths(&input), ["host.resolver_network", "host.network"]);
    }

    #[test]
    fn tunnel_id_is_required_and_a_uuid() {
        let mut input = http_named("api.internal");
        if let Some(rn) = input
            .host
            .as_mut()
            .and_then(|h| h.resolver_network.as_mut())
        {
            rn.tunnel_id = None;
        }
        assert_eq!(paths(&input), ["host.resolver_network.tunnel_id"]);
        let mut input = http_ips(Some("10.0.0.1"), None);
        if let Some(n) = input.host.as_mut().and_then(|h| h.network.as_mut()) {
            n.tunnel_id = Some("home".into());
        }
        assert!(message(&input, "host.network.tunnel_id").contains("\"home\""));
    }

    #[test]
    fn unknown_tunnels_are_refused() {
        let input = http_named("api.internal");
        let err = validate(&input, &|_| false).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "host.resolver_network.tunnel_id");
        assert!(err.problems[0].message.contains(&tunnel().to_string()));
    }

    #[test]
    fn ip_hosts_parse_and_dual_stack_is_allowed() {
        let spec = http_ips(Some("10.0.0.1"), Some("fd00::1"))
            .validate()
            .unwrap();
        assert_eq!(
            spec.host,
            Host::Ip {
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ipv6: Some("fd00::1".parse().unwrap()),
                network: Network {
                    virtual_network_id: None,
                    tunnel_id: tunnel()
                },
            }
        );
        assert!(http_ips(None, Some("::1")).validate().is_ok());
        assert_eq!(paths(&http_ips(Some("10.0.0"), None)), ["host.ipv4"]);
        assert_eq!(paths(&http_ips(Some("10.0.0.1:80"), None)), ["host.ipv4"]);
        assert!(message(&http_ips(Some("::1"), None), "host.ipv4").contains("host.ipv6"));
        assert_eq!(paths(&http_ips(None, Some("[::1]"))), ["host.ipv6"]);
        assert!(message(&http_ips(None, Some("10.0.0.1")), "host.ipv6").contains("host.ipv4"));
        assert_eq!(
            paths(&http_ips(Some("x"), Some("y"))),
            ["host.ipv4", "host.ipv6"]
        );
    }

    #[test]
    fn hostname_rules() {
        let long = format!("{}.internal", "a.".repeat(125));
        let long_label = format!("{}.internal", "a".repeat(64));
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (&long, "at most 253"),
            ("api internal", "whitespace"),
            ("http://api.internal", "scheme"),
            ("api.internal/v1", "path"),
            ("api.internal:8080", "port"),
            ("10.0.0.1", "IPv4 address"),
            ("::1", "IPv6 address"),
            ("[fd00::1]", "IPv6 address"),
            ("10.0.0.1:80", "with a port"),
            ("api..internal", "empty label"),
            (".api", "empty label"),
            ("api@internal", "'@'"),
            ("bücher.internal", "punycode"),
            (&long_label, "at most 63"),
        ];
        for (hostname, expected) in cases {
            let msg = message(&http_named(hostname), "host.hostname");
            assert!(msg.contains(expected), "{hostname:?}: {msg}");
        }
        for ok in [
            "api.internal",
            "my_service.internal",
            "localhost",
            "api.internal.",
            "xn--bcher-kva.internal",
        ] {
            assert!(
                http_named(ok).validate().is_ok(),
                "{ok:?} should be accepted"
            );
        }
    }

    #[test]
    fn every_hostname_problem_is_reported() {
        let msgs: Vec<String> = http_named("https://api internal/x")
            .validate()
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| p.message)
            .collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(
            msgs[0].contains("whitespace")
                && msgs[1].contains("scheme")
                && msgs[2].contains("path")
        );
    }

    #[test]
    fn resolver_ips_accept_ports_and_report_each_bad_entry() {
        let mut input = http_named("api.internal");
        let set = |input: &mut ServiceInput, ips: &[&str]| {
            if let Some(rn) = input
                .host
                .as_mut()
                .and_then(|h| h.resolver_network.as_mut())
            {
                rn.resolver_ips = Some(ips.iter().map(|s| (*s).to_owned()).collect());
            }
        };
        set(
            &mut input,
            &["10.0.0.53", "127.0.0.1:5353", "[::1]:5353", "fd00::53"],
        );
        assert!(input.validate().is_ok());
        set(
            &mut input,
            &["10.0.0.53", "nope", "10.0.0.1:0", "10.0.0.1:99999"],
        );
        assert_eq!(
            paths(&input),
            [
                "host.resolver_network.resolver_ips[1]",
                "host.resolver_network.resolver_ips[2]",
                "host.resolver_network.resolver_ips[3]"
            ]
        );
        assert!(message(&input, "host.resolver_network.resolver_ips[1]").contains("\"nope\""));
    }

    #[test]
    fn tls_settings_need_a_known_mode() {
        let mut input = http_named("api.internal");
        input.tls_settings = Some(TlsSettingsInput {
            cert_verification_mode: None,
            ca_certificate: None,
        });
        assert_eq!(paths(&input), ["tls_settings.cert_verification_mode"]);
        input.tls_settings = Some(TlsSettingsInput {
            cert_verification_mode: Some("strict".into()),
            ca_certificate: None,
        });
        assert!(message(&input, "tls_settings.cert_verification_mode").contains("\"strict\""));
        input.tls_settings = Some(TlsSettingsInput {
            cert_verification_mode: Some("verify_ca".into()),
            ca_certificate: None,
        });
        assert_eq!(
            input.validate().unwrap().tls_settings,
            Some(TlsSettings {
                cert_verification_mode: CertVerificationMode::VerifyCa,
                ca_certificate: None,
            })
        );
    }

    fn with_ca(mode: &str, pem: &str) -> ServiceInput {
        let mut input = http_named("api.internal");
        input.tls_settings = Some(TlsSettingsInput {
            cert_verification_mode: Some(mode.into()),
            ca_certificate: Some(pem.into()),
        });
        input
    }

    #[test]
    fn a_custom_ca_must_be_pem_certificates() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".to_owned()])
            .unwrap()
            .cert
            .pem();
        let spec = with_ca("verify_full", &ca).validate().unwrap();
        assert_eq!(
            spec.tls_settings.unwrap().ca_certificate.as_deref(),
            Some(ca.as_str())
        );

        let field = "tls_settings.ca_certificate";
        assert!(
            message(&with_ca("verify_ca", "not a certificate"), field)
                .contains("no PEM certificate")
        );
        let key =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert!(message(&with_ca("verify_ca", key), field).contains("not a certificate"));
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(message(&with_ca("verify_ca", junk), field).contains("not a usable X.509"));
        assert!(message(&with_ca("disabled", &ca), field).contains("no effect"));
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let input = ServiceInput {
            name: None,
            service_type: Some("http".into()),
            http_port: Some(0),
            tcp_port: Some(0),
            host: Some(HostInput {
                hostname: Some("x".into()),
                ipv4: Some("999.0.0.1".into()),
                ..HostInput::default()
            }),
            ..ServiceInput::default()
        };
        let err = input.validate().unwrap_err();
        let got: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(got, ["name", "http_port", "tcp_port", "host.ipv4", "host"]);
        let text = err.to_string();
        assert!(
            text.starts_with("invalid VPC service: name: required"),
            "{text}"
        );
    }
}

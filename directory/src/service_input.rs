//! The body of a create or full-replace request, kept as raw as the JSON it comes from.
//!
//! Values stay strings and wide integers here so that [`crate::validation`] can report every
//! problem at once, with its field path, instead of stopping at the first value serde rejects.
//! Unknown keys are refused (a typo like `resolver_ip` would otherwise silently drop the
//! resolvers); the read-only keys of a [`Service`] (`service_id`, `created_at`, `updated_at`) are
//! accepted and ignored, so a service fetched with GET can be sent back with PUT.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::service::{Host, Service, ServiceKind};

/// A service as given to create or replace (every field the caller may set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ServiceInputWire")]
pub struct ServiceInput {
    /// `name` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `type`: `http` or `tcp` (required).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    /// `http_port` (http only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<i64>,
    /// `https_port` (http only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_port: Option<i64>,
    /// `tcp_port` (required for tcp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<i64>,
    /// `app_protocol`: `postgresql` or `mysql` (tcp only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// `host` (required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInput>,
    /// `tls_settings`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<TlsSettingsInput>,
}

/// `host`: `hostname` + `resolver_network`, or `ipv4`/`ipv6` + `network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInput {
    /// `hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `ipv4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// `ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// `network` (with IPs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInput>,
    /// `resolver_network` (with a hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_network: Option<ResolverNetworkInput>,
}

/// `host.network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInput {
    /// `tunnel_id` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
    /// `virtual_network_id`: a virtual network of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network_id: Option<String>,
}

/// `host.resolver_network`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverNetworkInput {
    /// `tunnel_id` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_id: Option<String>,
    /// `virtual_network_id`: a virtual network of the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_network_id: Option<String>,
    /// `resolver_ips`: `ip`, `ip:port` or `[ipv6]:port` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_ips: Option<Vec<String>>,
}

/// `tls_settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettingsInput {
    /// `cert_verification_mode` (required when `tls_settings` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_verification_mode: Option<String>,
    /// `ca_certificate`: PEM certificate(s) of a private CA to trust as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// What is accepted on the wire: the input fields plus the ignored read-only ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceInputWire {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    service_type: Option<String>,
    #[serde(default)]
    http_port: Option<i64>,
    #[serde(default)]
    https_port: Option<i64>,
    #[serde(default)]
    tcp_port: Option<i64>,
    #[serde(default)]
    app_protocol: Option<String>,
    #[serde(default)]
    host: Option<HostInput>,
    #[serde(default)]
    tls_settings: Option<TlsSettingsInput>,
    #[serde(default, rename = "service_id")]
    _service_id: Option<IgnoredAny>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<IgnoredAny>,
}

impl From<ServiceInputWire> for ServiceInput {
    fn from(w: ServiceInputWire) -> Self {
        Self {
            name: w.name,
            service_type: w.service_type,
            http_port: w.http_port,
            https_port: w.https_port,
            tcp_port: w.tcp_port,
            app_protocol: w.app_protocol,
            host: w.host,
            tls_settings: w.tls_settings,
        }
    }
}

// === constructors for Rust callers ===

impl ServiceInput {
    /// An `http` service on the default ports (80 and 443).
    pub fn http(name: impl Into<String>, host: HostInput) -> Self {
        Self {
            name: Some(name.into()),
            service_type: Some("http".into()),
            host: Some(host),
            ..Self::default()
        }
    }

    /// A `tcp` service on `tcp_port`.
    pub fn tcp(name: impl Into<String>, tcp_port: u16, host: HostInput) -> Self {
        Self {
            name: Some(name.into()),
            service_type: Some("tcp".into()),
            tcp_port: Some(i64::from(tcp_port)),
            host: Some(host),
            ..Self::default()
        }
    }
}

impl HostInput {
    /// `{hostname, resolver_network: {tunnel_id}}` (the connector's resolver).
    pub fn hostname(hostname: impl Into<String>, tunnel_id: Uuid) -> Self {
        Self {
            hostname: Some(hostname.into()),
            resolver_network: Some(ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel_id.to_string()),
                resolver_ips: None,
            }),
            ..Self::default()
        }
    }

    /// `{ipv4?, ipv6?, network: {tunnel_id}}`.
    pub fn ips(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>, tunnel_id: Uuid) -> Self {
        Self {
            ipv4: ipv4.map(|ip| ip.to_string()),
            ipv6: ipv6.map(|ip| ip.to_string()),
            network: Some(NetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel_id.to_string()),
            }),
            ..Self::default()
        }
    }
}

impl From<&Service> for ServiceInput {
    /// The input that recreates `service` (for edit-then-replace).
    fn from(service: &Service) -> Self {
        let (http_port, https_port, tcp_port, app_protocol) = match service.kind {
            ServiceKind::Http {
                http_port,
                https_port,
                tcp_port,
            } => (
                http_port.map(i64::from),
                https_port.map(i64::from),
                tcp_port.map(i64::from),
                None,
            ),
            ServiceKind::Tcp {
                tcp_port,
                app_protocol,
            } => (
                None,
                None,
                Some(i64::from(tcp_port)),
                app_protocol.map(|p| p.as_str().to_owned()),
            ),
        };
        let host = match &service.host {
            Host::Hostname {
                hostname,
                resolver_network,
            } => HostInput {
                hostname: Some(hostname.clone()),
                resolver_network: Some(ResolverNetworkInput {
                    virtual_network_id: resolver_network.virtual_network_id.map(|v| v.to_string()),
                    tunnel_id: Some(resolver_network.tunnel_id.to_string()),
                    resolver_ips: resolver_network.resolver_ips.clone(),
                }),
                ..HostInput::default()
            },
            Host::Ip {
                ipv4,
                ipv6,
                network,
            } => HostInput {
                ipv4: ipv4.map(|ip| ip.to_string()),
                ipv6: ipv6.map(|ip| ip.to_string()),
                network: Some(NetworkInput {
                    virtual_network_id: network.virtual_network_id.map(|v| v.to_string()),
                    tunnel_id: Some(network.tunnel_id.to_string()),
                }),
                ..HostInput::default()
            },
        };
        Self {
            name: Some(service.name.clone()),
            service_type: Some(service.service_type().as_str().to_owned()),
            http_port,
            https_port,
            tcp_port,
            app_protocol,
            host: Some(host),
            tls_settings: service.tls_settings.as_ref().map(|t| TlsSettingsInput {
                cert_verification_mode: Some(t.cert_verification_mode.as_str().to_owned()),
                ca_certificate: t.ca_certificate.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_fields_are_ignored_and_typos_refused() {
        let body = r#"{"service_id":"x","created_at":"t","updated_at":"t","name":"a","type":"http",
            "host":{"hostname":"a.internal","resolver_network":{"tunnel_id":"t"}}}"#;
        let input: ServiceInput = serde_json::from_str(body).unwrap();
        assert_eq!(input.name.as_deref(), Some("a"));

        let typo = r#"{"name":"a","type":"http","htp_port":80}"#;
        let err = serde_json::from_str::<ServiceInput>(typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("htp_port"), "{err}");

        let nested =
            r#"{"host":{"hostname":"a","resolver_network":{"tunnel_id":"t","resolver_ip":[]}}}"#;
        let err = serde_json::from_str::<ServiceInput>(nested)
            .unwrap_err()
            .to_string();
        assert!(err.contains("resolver_ip"), "{err}");
    }
}

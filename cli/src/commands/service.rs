//! `wvpc service create|list|get|update|delete`: VPC services in the local directory, with
//! wrangler's `vpc service` flags.
//!
//! With `--api` (or `WVPC_API`) the same commands talk to a directory API instead of the
//! local `--state`; validation problems come back from it and are shown the same way.
//!
//! Flag conflicts are declared to clap as wrangler declares them (`--hostname` vs
//! `--ipv4`/`--ipv6`; `--resolver-ips` needs `--hostname`; `--app-protocol` vs
//! `--http-port`/`--https-port`), except that `--tcp-port` may be given to an http service
//! (the port `connect()` dials on it) and `--ipv4` and `--ipv6` may be combined (dual
//! stack, as the API allows). Every other rule is the directory's validation, whose problems
//! are printed all at once with the flag they are about.

use std::io::Write;

use anyhow::Context as _;
use uuid::Uuid;
use wvpc_directory::{
    Directory, DirectoryError, Host, HostInput, NetworkInput, Problem, ResolverNetworkInput,
    Service, ServiceInput, ServiceKind, ServiceType, TlsSettingsInput, ValidationError,
};

use crate::UsageError;
use crate::remote::{ApiArgs, Remote};
use crate::table;
use http::Method;
use wvpc_directory::api::client::ClientError;
use wvpc_directory::api::envelope;

/// `wvpc service …`
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Create a VPC service
    Create(CreateArgs),
    /// List VPC services
    List {
        /// Only services of this type
        #[arg(long = "type", value_enum, value_name = "TYPE")]
        service_type: Option<TypeArg>,
        /// Print a JSON array of service objects
        #[arg(long)]
        json: bool,
    },
    /// Show a VPC service
    Get {
        /// Service id
        service_id: Uuid,
        /// Print the service object as JSON
        #[arg(long)]
        json: bool,
    },
    /// Replace a VPC service: give every flag again, as for create (full replace)
    Update(UpdateArgs),
    /// Delete a VPC service
    Delete {
        /// Service id
        service_id: Uuid,
    },
    /// Show a VPC service's traffic over the last minutes: requests and connections, errors
    /// by category and code, latency, as the nodes given count them
    Metrics(super::service_metrics::MetricsArgs),
}

/// `wvpc service create`
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Service name
    pub name: String,
    /// Type, host, tunnel, ports and TLS of the service.
    #[command(flatten)]
    pub spec: ServiceFlags,
    /// Print the service object as JSON
    #[arg(long)]
    pub json: bool,
}

/// `wvpc service update`
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Service id
    pub service_id: Uuid,
    /// Service name
    #[arg(long)]
    pub name: String,
    /// Type, host, tunnel, ports and TLS of the service.
    #[command(flatten)]
    pub spec: ServiceFlags,
    /// Print the service object as JSON
    #[arg(long)]
    pub json: bool,
}

/// The flags that describe a service (create and update).
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("host").required(true).multiple(true).args(["hostname", "ipv4", "ipv6"])
))]
pub struct ServiceFlags {
    /// Service type
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub service_type: TypeArg,
    /// Tunnel that reaches the service (`wvpc tunnel list`)
    #[arg(long, value_name = "UUID")]
    pub tunnel_id: String,
    /// Hostname, resolved inside the private network (tcp: may end in :PORT)
    #[arg(long, conflicts_with_all = ["ipv4", "ipv6"])]
    pub hostname: Option<String>,
    /// Resolvers for --hostname inside the private network, comma-separated
    /// [default: the connector's system resolver]
    #[arg(
        long,
        value_delimiter = ',',
        requires = "hostname",
        // clap skips `requires` when the required arg conflicts with a present one, so the
        // conflicts are spelled out too.
        conflicts_with_all = ["ipv4", "ipv6"],
        value_name = "IP[:PORT],..."
    )]
    pub resolver_ips: Option<Vec<String>>,
    /// IPv4 address of the service
    #[arg(long)]
    pub ipv4: Option<String>,
    /// IPv6 address of the service (with --ipv4: dual stack)
    #[arg(long)]
    pub ipv6: Option<String>,
    /// Port for http:// requests [default: 80 when neither port is given; giving only
    /// --https-port disables http]
    #[arg(long, conflicts_with = "app_protocol", allow_negative_numbers = true)]
    pub http_port: Option<i64>,
    /// Port for https:// requests [default: 443 when neither port is given; giving only
    /// --http-port disables https]
    #[arg(long, conflicts_with = "app_protocol", allow_negative_numbers = true)]
    pub https_port: Option<i64>,
    /// Port of a tcp service; on an http service, the port `connect()` dials (optional)
    #[arg(long, allow_negative_numbers = true)]
    pub tcp_port: Option<i64>,
    /// Virtual network the host is in (`wvpc vnet list`); for --ipv4/--ipv6 the tunnel needs
    /// a route there covering each address
    #[arg(long, value_name = "UUID")]
    pub virtual_network_id: Option<String>,
    /// Database protocol a tcp service speaks
    #[arg(long, value_enum)]
    pub app_protocol: Option<AppProtocolArg>,
    /// Origin certificate verification [default: verify_full]
    #[arg(long, value_enum)]
    pub cert_verification_mode: Option<CertModeArg>,
    /// PEM file with a private CA's certificate(s), trusted for the https origin besides the
    /// system roots
    #[arg(long, value_name = "PEM_FILE")]
    pub ca_certificate: Option<std::path::PathBuf>,
}

/// `--type`
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TypeArg {
    /// HTTP service reached with fetch()
    Http,
    /// TCP service
    Tcp,
}

/// `--app-protocol`
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AppProtocolArg {
    /// PostgreSQL
    Postgresql,
    /// MySQL
    Mysql,
}

/// `--cert-verification-mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum CertModeArg {
    /// Verify the chain and the hostname
    VerifyFull,
    /// Verify the chain only
    VerifyCa,
    /// Do not verify
    Disabled,
}

/// A service refused by validation, shown with the flag each problem is about.
#[derive(Debug, thiserror::Error)]
#[error("invalid VPC service ({} problem{}):{}", .0.problems.len(), if .0.problems.len() == 1 { "" } else { "s" }, render_problems(&.0.problems))]
pub struct InvalidService(pub ValidationError);

/// Runs a service subcommand: against the API when `api` is given, else on the local state.
pub async fn run(
    command: ServiceCommand,
    state: &crate::StateDir,
    api: &ApiArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if let ServiceCommand::Metrics(args) = command {
        return super::service_metrics::run(args, out).await;
    }
    let backend = match &api.api {
        Some(url) => Backend::Remote(Remote::connect(url, api.account.as_deref()).await?),
        None => Backend::Local(state.open_directory()?),
    };
    match command {
        ServiceCommand::Create(args) => {
            let input = args.spec.into_input(args.name)?;
            let service = backend.create(&input).await?;
            if args.json {
                return print_json(out, &service);
            }
            writeln!(out, "✅ Created VPC service: {}", service.service_id)?;
            print_details(&backend, &service, out).await
        }
        ServiceCommand::Update(args) => {
            let input = args.spec.into_input(args.name)?;
            let service = backend.replace(args.service_id, &input).await?;
            if args.json {
                return print_json(out, &service);
            }
            writeln!(out, "✅ Updated VPC service: {}", service.service_id)?;
            print_details(&backend, &service, out).await
        }
        ServiceCommand::List { service_type, json } => {
            let services = backend
                .list(service_type.map(TypeArg::service_type))
                .await?;
            if json {
                return print_json(out, &services);
            }
            print_table(&services, out)
        }
        ServiceCommand::Get { service_id, json } => {
            let service = backend.get(service_id).await?.with_context(|| {
                format!("no VPC service {service_id}; `wvpc service list` shows them")
            })?;
            if json {
                return print_json(out, &service);
            }
            writeln!(out, "VPC service: {}", service.service_id)?;
            print_details(&backend, &service, out).await
        }
        ServiceCommand::Delete { service_id } => {
            backend.delete(service_id).await?;
            writeln!(out, "✅ Deleted VPC service: {service_id}")?;
            Ok(())
        }
        // Answered above: the figures come from the nodes, not the directory.
        ServiceCommand::Metrics(_) => Ok(()),
    }
}

/// Where services are kept: the local database, or a directory API.
enum Backend {
    Local(Directory),
    Remote(Remote),
}

impl Backend {
    async fn create(&self, input: &ServiceInput) -> anyhow::Result<Service> {
        match self {
            Backend::Local(dir) => Ok(dir.create_service(input).map_err(explain)?),
            Backend::Remote(remote) => {
                let body = serde_json::to_value(input)?;
                decode(remote_call(remote, Method::POST, SERVICES, Some(&body)).await?)
            }
        }
    }

    async fn replace(&self, id: Uuid, input: &ServiceInput) -> anyhow::Result<Service> {
        match self {
            Backend::Local(dir) => Ok(dir.replace_service(id, input).map_err(explain)?),
            Backend::Remote(remote) => {
                let body = serde_json::to_value(input)?;
                let path = format!("{SERVICES}/{id}");
                decode(remote_call(remote, Method::PUT, &path, Some(&body)).await?)
            }
        }
    }

    async fn list(&self, filter: Option<ServiceType>) -> anyhow::Result<Vec<Service>> {
        match self {
            Backend::Local(dir) => Ok(dir.list_services(filter)?),
            Backend::Remote(remote) => {
                let path = match filter {
                    Some(t) => format!("{SERVICES}?type={}", t.as_str()),
                    None => SERVICES.to_owned(),
                };
                remote
                    .list_all(&path)
                    .await?
                    .into_iter()
                    .map(decode)
                    .collect()
            }
        }
    }

    async fn get(&self, id: Uuid) -> anyhow::Result<Option<Service>> {
        match self {
            Backend::Local(dir) => Ok(dir.service(id)?),
            Backend::Remote(remote) => {
                match remote
                    .call(Method::GET, &format!("{SERVICES}/{id}"), None)
                    .await
                {
                    Ok(value) => Ok(Some(decode(value)?)),
                    Err(err) if is_not_found(&err) => Ok(None),
                    Err(err) => Err(err),
                }
            }
        }
    }

    async fn delete(&self, id: Uuid) -> anyhow::Result<()> {
        match self {
            Backend::Local(dir) => Ok(dir.delete_service(id)?),
            Backend::Remote(remote) => {
                remote
                    .call(Method::DELETE, &format!("{SERVICES}/{id}"), None)
                    .await?;
                Ok(())
            }
        }
    }

    /// The tunnel's name, for display; `None` when it cannot be found.
    async fn tunnel_name(&self, id: Uuid) -> Option<String> {
        match self {
            Backend::Local(dir) => dir.tunnel(id).ok().flatten().map(|t| t.name),
            Backend::Remote(remote) => remote
                .call(Method::GET, &format!("cfd_tunnel/{id}"), None)
                .await
                .ok()
                .and_then(|t| t["name"].as_str().map(str::to_owned)),
        }
    }
}

const SERVICES: &str = "connectivity/directory/services";

/// A call whose validation errors are shown with their flags, like local ones.
async fn remote_call(
    remote: &Remote,
    method: Method,
    rest: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    remote
        .client
        .call(method, &remote.path(rest), body)
        .await
        .map_err(|err| match crate::remote::validation_problems(&err) {
            Some(problems) => InvalidService(ValidationError { problems }).into(),
            None => err.into(),
        })
}

fn is_not_found(err: &anyhow::Error) -> bool {
    matches!(
        err.downcast_ref::<ClientError>(),
        Some(ClientError::Api(e)) if e.status == http::StatusCode::NOT_FOUND
            && e.errors.iter().any(|e| e.code == envelope::code::SERVICE_NOT_FOUND)
    )
}

fn decode(value: serde_json::Value) -> anyhow::Result<Service> {
    serde_json::from_value(value).context("the directory API answered with an unreadable service")
}

impl ServiceFlags {
    /// The API body these flags describe (not yet validated, apart from the clap conflicts).
    fn into_input(self, name: String) -> Result<ServiceInput, UsageError> {
        let mut hostname = self.hostname;
        let mut tcp_port = self.tcp_port;
        // wrangler accepts `--hostname db.internal:5432` for tcp services.
        if self.service_type == TypeArg::Tcp
            && let Some((host, port)) = hostname.as_deref().and_then(split_port)
        {
            match tcp_port {
                Some(given) if given != i64::from(port) => {
                    return Err(UsageError(format!(
                        "conflicting TCP port: --hostname gives {port}, --tcp-port gives {given}; give the port once"
                    )));
                }
                _ => {
                    tcp_port = Some(i64::from(port));
                    hostname = Some(host.to_owned());
                }
            }
        }
        let ca_certificate = match &self.ca_certificate {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!(
                    "--ca-certificate: cannot read {}: {e}",
                    path.display()
                ))
            })?),
        };
        let tunnel_id = Some(self.tunnel_id);
        let host = match hostname {
            Some(hostname) => HostInput {
                hostname: Some(hostname),
                resolver_network: Some(ResolverNetworkInput {
                    virtual_network_id: self.virtual_network_id,
                    tunnel_id,
                    resolver_ips: self.resolver_ips,
                }),
                ..HostInput::default()
            },
            None => HostInput {
                ipv4: self.ipv4,
                ipv6: self.ipv6,
                network: Some(NetworkInput {
                    virtual_network_id: self.virtual_network_id,
                    tunnel_id: tunnel_id.clone(),
                }),
                // Never dropped silently: validation explains they need a hostname.
                resolver_network: self.resolver_ips.map(|ips| ResolverNetworkInput {
                    virtual_network_id: None,
                    tunnel_id,
                    resolver_ips: Some(ips),
                }),
                ..HostInput::default()
            },
        };
        Ok(ServiceInput {
            name: Some(name),
            service_type: Some(self.service_type.service_type().as_str().to_owned()),
            http_port: self.http_port,
            https_port: self.https_port,
            tcp_port,
            app_protocol: self.app_protocol.map(|p| p.as_str().to_owned()),
            host: Some(host),
            tls_settings: match (self.cert_verification_mode, ca_certificate) {
                (None, None) => None,
                (mode, ca_certificate) => Some(TlsSettingsInput {
                    cert_verification_mode: Some(
                        mode.map_or("verify_full", CertModeArg::as_str).to_owned(),
                    ),
                    ca_certificate,
                }),
            },
        })
    }
}

/// `host:port` with a numeric, non-zero port and a host without colons (not IPv6).
fn split_port(hostname: &str) -> Option<(&str, u16)> {
    let (host, port) = hostname.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return None;
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(|p| (host, p))
}

impl TypeArg {
    fn service_type(self) -> ServiceType {
        match self {
            TypeArg::Http => ServiceType::Http,
            TypeArg::Tcp => ServiceType::Tcp,
        }
    }
}

impl AppProtocolArg {
    fn as_str(self) -> &'static str {
        match self {
            AppProtocolArg::Postgresql => "postgresql",
            AppProtocolArg::Mysql => "mysql",
        }
    }
}

impl CertModeArg {
    fn as_str(self) -> &'static str {
        match self {
            CertModeArg::VerifyFull => "verify_full",
            CertModeArg::VerifyCa => "verify_ca",
            CertModeArg::Disabled => "disabled",
        }
    }
}

/// Validation problems are shown with their flags; everything else as the directory says it.
fn explain(err: DirectoryError) -> anyhow::Error {
    match err {
        DirectoryError::Invalid(v) => InvalidService(v).into(),
        other => other.into(),
    }
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

/// The flag that sets a field of the service object.
fn flag_for(path: &str) -> Option<&'static str> {
    Some(match path {
        "name" => "<NAME>/--name",
        "type" => "--type",
        "http_port" => "--http-port",
        "https_port" => "--https-port",
        "tcp_port" => "--tcp-port",
        "app_protocol" => "--app-protocol",
        "host" => "--hostname/--ipv4/--ipv6",
        "host.hostname" => "--hostname",
        "host.ipv4" => "--ipv4",
        "host.ipv6" => "--ipv6",
        "host.network" | "host.resolver_network" => "--hostname/--ipv4/--ipv6",
        "host.network.tunnel_id" | "host.resolver_network.tunnel_id" => "--tunnel-id",
        "host.network.virtual_network_id" | "host.resolver_network.virtual_network_id" => {
            "--virtual-network-id"
        }
        "tls_settings.cert_verification_mode" => "--cert-verification-mode",
        "tls_settings.ca_certificate" => "--ca-certificate",
        p if p.starts_with("host.resolver_network.resolver_ips") => "--resolver-ips",
        _ => return None,
    })
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

async fn print_details(
    backend: &Backend,
    s: &Service,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let tunnel_name = backend
        .tunnel_name(s.tunnel_id())
        .await
        .map(|name| format!(" ({name})"))
        .unwrap_or_default();
    writeln!(out, "   Name: {}", s.name)?;
    writeln!(out, "   Type: {}", s.service_type())?;
    match s.kind {
        ServiceKind::Http {
            http_port,
            https_port,
            tcp_port,
        } => {
            writeln!(out, "   HTTP port: {}", port_or_disabled(http_port))?;
            writeln!(out, "   HTTPS port: {}", port_or_disabled(https_port))?;
            if let Some(port) = tcp_port {
                writeln!(out, "   TCP port (connect()): {port}")?;
            }
        }
        ServiceKind::Tcp {
            tcp_port,
            app_protocol,
        } => {
            writeln!(out, "   TCP port: {tcp_port}")?;
            if let Some(protocol) = app_protocol {
                writeln!(out, "   App protocol: {protocol}")?;
            }
        }
    }
    match &s.host {
        Host::Hostname {
            hostname,
            resolver_network,
        } => {
            writeln!(out, "   Hostname: {hostname}")?;
            match resolver_network.resolver_ips.as_deref() {
                Some(ips) if !ips.is_empty() => {
                    writeln!(out, "   Resolver IPs: {}", ips.join(", "))?
                }
                _ => writeln!(out, "   Resolver: the connector's system resolver")?,
            }
        }
        Host::Ip { ipv4, ipv6, .. } => {
            if let Some(ip) = ipv4 {
                writeln!(out, "   IPv4: {ip}")?;
            }
            if let Some(ip) = ipv6 {
                writeln!(out, "   IPv6: {ip}")?;
            }
        }
    }
    writeln!(out, "   Tunnel ID: {}{tunnel_name}", s.tunnel_id())?;
    if let Some(vnet) = s.virtual_network_id() {
        writeln!(out, "   Virtual network: {vnet}")?;
    }
    let default = if s.tls_settings.is_none() {
        " (default)"
    } else {
        ""
    };
    writeln!(
        out,
        "   Certificate verification: {}{default}",
        s.cert_verification_mode()
    )?;
    if s.ca_certificate().is_some() {
        writeln!(out, "   Private CA: trusted besides the system roots")?;
    }
    writeln!(out, "   Created: {}", s.created_at)?;
    writeln!(out, "   Modified: {}", s.updated_at)?;
    Ok(())
}

fn port_or_disabled(port: Option<u16>) -> String {
    port.map_or_else(|| "disabled".to_owned(), |p| p.to_string())
}

fn print_table(services: &[Service], out: &mut dyn Write) -> anyhow::Result<()> {
    if services.is_empty() {
        writeln!(
            out,
            "No VPC services. Create one with `wvpc service create`."
        )?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let ports = match s.kind {
                ServiceKind::Http {
                    http_port,
                    https_port,
                    tcp_port,
                } => {
                    let mut ports = Vec::new();
                    if let Some(p) = http_port {
                        ports.push(format!("HTTP:{p}"));
                    }
                    if let Some(p) = https_port {
                        ports.push(format!("HTTPS:{p}"));
                    }
                    if let Some(p) = tcp_port {
                        ports.push(format!("TCP:{p}"));
                    }
                    ports.join(", ")
                }
                ServiceKind::Tcp { tcp_port, .. } => format!("TCP:{tcp_port}"),
            };
            let host = match &s.host {
                Host::Hostname { hostname, .. } => hostname.clone(),
                Host::Ip { ipv4, ipv6, .. } => ipv4
                    .map(|ip| ip.to_string())
                    .into_iter()
                    .chain(ipv6.map(|ip| ip.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let tunnel = s.tunnel_id().to_string();
            vec![
                s.service_id.to_string(),
                s.name.clone(),
                s.service_type().to_string(),
                ports,
                host,
                tunnel.get(..8).unwrap_or(&tunnel).to_owned(),
                super::tunnel::short_time(&s.created_at),
                super::tunnel::short_time(&s.updated_at),
            ]
        })
        .collect();
    let headers = [
        "ID", "NAME", "TYPE", "PORTS", "HOST", "TUNNEL", "CREATED", "MODIFIED",
    ];
    write!(out, "{}", table::render(&headers, &rows))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_port_comes_out_of_the_hostname() {
        assert_eq!(split_port("db.internal:5432"), Some(("db.internal", 5432)));
        assert_eq!(split_port("db.internal"), None);
        assert_eq!(split_port("db.internal:0"), None);
        assert_eq!(split_port("db.internal:99999"), None);
        assert_eq!(split_port("::1"), None);
        assert_eq!(split_port("[::1]:5432"), None);
    }

    #[test]
    fn every_validation_path_has_a_flag() {
        for path in [
            "name",
            "type",
            "http_port",
            "https_port",
            "tcp_port",
            "app_protocol",
            "host",
            "host.hostname",
            "host.ipv4",
            "host.ipv6",
            "host.network",
            "host.resolver_network",
            "host.network.tunnel_id",
            "host.resolver_network.tunnel_id",
            "host.network.virtual_network_id",
            "host.resolver_network.virtual_network_id",
            "host.resolver_network.resolver_ips[3]",
            "tls_settings.cert_verification_mode",
        ] {
            assert!(flag_for(path).is_some(), "{path}");
        }
    }
}

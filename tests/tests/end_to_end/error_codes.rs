//! The error-code table: every code a script can see, each from its real cause on real
//! sockets — the stack `wvpc dev` runs, our connector over QUIC, a real DNS server and
//! loopback origins that misbehave on purpose.
//!
//! The script (`sdk/examples/binding_checks.rs`) fetches through its binding and reads the
//! whole body itself, then reports what it saw: the SDK's `ProxyError: <code>` and the
//! wasi:http `error-code` variant the host handed it. Each row also checks the code's
//! category in `wvpc_errors` (the product's Bad Upstream / Client / Internal).
//!
//! A JavaScript script (`tests/js/binding_checks.js`) runs the same rows and must throw the
//! same `ProxyError: <code>` — all but a failure after the response head (`ShortBody`), which
//! the JavaScript engine reports as a body `TypeError` without the code.
//!
//! Two worlds: most rows share one (connector dial timeout 1 s, binding-worker cap of one
//! connection per service); `rate_limited` needs a connector flow limit of one, and the rows
//! that take the connector or the service away come last in that second world.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use wvpc_directory::{HostInput, ResolverNetworkInput, ServiceInput, TlsSettingsInput};
use wvpc_errors::{Category, ErrorCode, ProxyError};
use wvpc_tests::dns::DnsMode;
use wvpc_tests::real::{RealWorld, WorldOptions};
use wvpc_tests::{client, guests, trace_init, within, within_build};

/// What makes a row fail (also the real side of the mock's fault comparison, [`super::dev_mock`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cause {
    /// The service's port has no listener.
    ClosedPort,
    /// The origin's listen backlog is full, so the connector's 1 s dial times out.
    FullBacklog,
    /// The origin reads the request and hangs up without an answer.
    HangUp,
    /// The service's hostname does not exist (the DNS server answers NXDOMAIN).
    NxDomain,
    /// The DNS server answers SERVFAIL.
    ServFail,
    /// The DNS server never answers.
    SilentDns,
    /// https to an origin whose self-signed certificate nothing trusts (`verify_full`).
    UntrustedCertificate,
    /// https to an origin that speaks plain HTTP on the https port.
    PlainHttpOnHttpsPort,
    /// The origin promises 1000 bytes of body, sends 5 and closes.
    ShortBody,
    /// The service's one allowed origin connection is busy with a stalled response.
    ConnectionCapFull,
    /// The connector's one allowed flow is held by another client of the tunnel.
    FlowLimitFull,
    /// The connector is stopped.
    NoConnector,
    /// The service was deleted from the directory.
    DeletedService,
}

struct Row {
    code: ErrorCode,
    /// The DNS rcode the code carries, for `dns_error`.
    rcode: Option<&'static str>,
    /// What the wasi:http `error-code` the script saw must contain (its `Debug` form).
    wasi: &'static str,
    category: Category,
    cause: Cause,
}

const fn row(code: ErrorCode, wasi: &'static str, category: Category, cause: Cause) -> Row {
    Row {
        code,
        rcode: None,
        wasi,
        category,
        cause,
    }
}

/// Rows of the first world, in order (the cap row stalls a connection, so it goes last).
const SHARED_WORLD: &[Row] = &[
    row(
        ErrorCode::ConnectionRefused,
        "ConnectionRefused",
        Category::BadUpstream,
        Cause::ClosedPort,
    ),
    row(
        ErrorCode::ConnectionTimeout,
        "ConnectionTimeout",
        Category::BadUpstream,
        Cause::FullBacklog,
    ),
    row(
        ErrorCode::ConnectionTerminated,
        "ConnectionTerminated",
        Category::BadUpstream,
        Cause::HangUp,
    ),
    Row {
        code: ErrorCode::DnsError,
        rcode: Some("NXDOMAIN"),
        wasi: "DnsError",
        category: Category::Client,
        cause: Cause::NxDomain,
    },
    Row {
        code: ErrorCode::DnsError,
        rcode: Some("SERVFAIL"),
        wasi: "DnsError",
        category: Category::BadUpstream,
        cause: Cause::ServFail,
    },
    row(
        ErrorCode::DnsTimeout,
        "DnsTimeout",
        Category::BadUpstream,
        Cause::SilentDns,
    ),
    row(
        ErrorCode::TlsCertificateError,
        "TlsCertificateError",
        Category::BadUpstream,
        Cause::UntrustedCertificate,
    ),
    row(
        ErrorCode::TlsProtocolError,
        "TlsProtocolError",
        Category::BadUpstream,
        Cause::PlainHttpOnHttpsPort,
    ),
    row(
        ErrorCode::HttpResponseIncomplete,
        "HttpResponseIncomplete",
        Category::BadUpstream,
        Cause::ShortBody,
    ),
    row(
        ErrorCode::ConnectionLimitReached,
        "ConnectionLimitReached",
        Category::BadUpstream,
        Cause::ConnectionCapFull,
    ),
];

/// Rows of the second world, in order (each takes away more of the path).
const FLOW_LIMITED_WORLD: &[Row] = &[
    row(
        ErrorCode::RateLimited,
        "InternalError(Some(\"rate_limited\"))",
        Category::Client,
        Cause::FlowLimitFull,
    ),
    row(
        ErrorCode::DestinationUnavailable,
        "DestinationUnavailable",
        Category::BadUpstream,
        Cause::NoConnector,
    ),
    row(
        ErrorCode::DestinationNotFound,
        "DestinationNotFound",
        Category::BadUpstream,
        Cause::DeletedService,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_code_reaches_the_script_from_its_real_cause() {
    trace_init();
    let mut world = start(WorldOptions {
        script: guests::BINDING_CHECKS,
        dial_timeout: Some(Duration::from_secs(1)),
        max_connections_per_service: 1,
        ..WorldOptions::default()
    })
    .await;
    for row in SHARED_WORLD {
        run_row(&mut world, row, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_script_sees_the_same_codes() {
    if !guests::javascript_builds() {
        return;
    }
    trace_init();
    let options = |max_active_flows, dial_timeout| WorldOptions {
        script: guests::BINDING_CHECKS_JS,
        dial_timeout,
        max_connections_per_service: 1,
        max_active_flows,
        ..WorldOptions::default()
    };
    let mut world = start_building(options(0, Some(Duration::from_secs(1)))).await;
    for row in SHARED_WORLD
        .iter()
        .filter(|r| !matches!(r.cause, Cause::ShortBody))
    {
        run_row(&mut world, row, false).await;
    }
    drop(world);
    let mut world = start_building(options(1, None)).await;
    for row in FLOW_LIMITED_WORLD {
        run_row(&mut world, row, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_of_the_connector_and_the_directory_reach_the_script() {
    trace_init();
    let mut world = start(WorldOptions {
        script: guests::BINDING_CHECKS,
        max_active_flows: 1,
        ..WorldOptions::default()
    })
    .await;
    for row in FLOW_LIMITED_WORLD {
        run_row(&mut world, row, true).await;
    }
}

#[test]
fn the_table_covers_every_code_the_issue_names_once() {
    let mut seen: Vec<(ErrorCode, Option<&str>)> = SHARED_WORLD
        .iter()
        .chain(FLOW_LIMITED_WORLD)
        .map(|r| (r.code, r.rcode))
        .collect();
    let count = seen.len();
    seen.sort_by_key(|(code, rcode)| (code.ordinal(), *rcode));
    seen.dedup();
    assert_eq!(seen.len(), count, "a code appears twice");
    assert_eq!(count, 13);
}

pub(crate) async fn start(options: WorldOptions) -> RealWorld {
    within("starting the real path", RealWorld::start_with(options))
        .await
        .expect("starting the real path")
}

/// [`start`] for a script that is built first (JavaScript).
async fn start_building(options: WorldOptions) -> RealWorld {
    within_build("starting the real path", RealWorld::start_with(options))
        .await
        .expect("starting the real path")
}

/// Sets up the row's cause, sends one request through the script and checks what it saw
/// (and, for the Rust script, the wasi:http `error-code` it was handed: `wasi`).
async fn run_row(world: &mut RealWorld, row: &Row, checks_wasi: bool) {
    let what = format!("{} ({:?})", row.code, row.cause);
    let expected = match row.rcode {
        Some(rcode) => ProxyError::dns(rcode),
        None => ProxyError::new(row.code),
    };
    assert_eq!(expected.category(), row.category, "{what}: category");

    let started = Instant::now();
    let (path, _keep) = cause(world, row.cause).await;
    within(
        "iris routes the row's service",
        world.stack.routes_current(),
    )
    .await
    .expect("reading the directory");
    let reply = within(&what, client::get(world.stack.script_addr, &path)).await;
    let wasi = reply
        .headers
        .get("wvpc-wasi-error-code")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    eprintln!(
        "{:<26} {:<28} {:>6.2}s  {:?}: {wasi}",
        row.code.wire_name(),
        row.rcode.unwrap_or(""),
        started.elapsed().as_secs_f64(),
        row.cause,
    );
    assert_eq!(reply.status, 502, "{what}: {}", reply.text());
    assert_eq!(reply.text(), format!("ProxyError: {}", row.code), "{what}");
    if !checks_wasi {
        return;
    }
    assert!(wasi.contains(row.wasi), "{what}: the script saw {wasi:?}");
    if let Some(rcode) = row.rcode {
        assert!(wasi.contains(rcode), "{what}: the script saw {wasi:?}");
    }
}

/// Whatever must stay alive while the row's request runs.
pub(crate) type Keep = Vec<Box<dyn std::any::Any + Send>>;

/// Applies `cause` and returns the script path to request.
pub(crate) async fn cause(world: &mut RealWorld, cause: Cause) -> (String, Keep) {
    let loopback = Ipv4Addr::LOCALHOST;
    let http = |host: &str| format!("/http/{host}/x");
    match cause {
        Cause::ClosedPort => {
            let port = closed_port();
            set_service(world, ip_host(world, loopback), Some(port), None, None);
            (http("api.internal"), vec![])
        }
        Cause::FullBacklog => {
            let (addr, keep) = full_backlog_listener();
            set_service(
                world,
                ip_host(world, loopback),
                Some(addr.port()),
                None,
                None,
            );
            (http("api.internal"), keep)
        }
        Cause::HangUp => {
            let addr = misbehaving_origin(Misbehaviour::HangUp, None).await;
            set_service(
                world,
                ip_host(world, loopback),
                Some(addr.port()),
                None,
                None,
            );
            (http("api.internal"), vec![])
        }
        Cause::NxDomain => {
            set_service(
                world,
                name_host(world, "missing.internal"),
                Some(80),
                None,
                None,
            );
            (http("missing.internal"), vec![])
        }
        Cause::ServFail => {
            world.dns.table.set_mode(DnsMode::ServFail);
            set_service(
                world,
                name_host(world, "servfail.internal"),
                Some(80),
                None,
                None,
            );
            (
                http("servfail.internal"),
                vec![Box::new(DnsModeReset(world.dns.table.clone()))],
            )
        }
        Cause::SilentDns => {
            world.dns.table.set_mode(DnsMode::Silent);
            set_service(
                world,
                name_host(world, "silent.internal"),
                Some(80),
                None,
                None,
            );
            (
                http("silent.internal"),
                vec![Box::new(DnsModeReset(world.dns.table.clone()))],
            )
        }
        Cause::UntrustedCertificate => {
            let addr = self_signed_tls_origin("secure.internal").await;
            let verify_full = Some(TlsSettingsInput {
                cert_verification_mode: Some("verify_full".into()),
                ca_certificate: None,
            });
            set_service(
                world,
                ip_host(world, loopback),
                None,
                Some(addr.port()),
                verify_full,
            );
            ("/https/secure.internal/x".into(), vec![])
        }
        Cause::PlainHttpOnHttpsPort => {
            let port = world.origin.addr.port();
            let origin_ip = match world.origin.addr {
                SocketAddr::V4(v4) => *v4.ip(),
                SocketAddr::V6(_) => unreachable!("the origin listens on IPv4"),
            };
            set_service(world, ip_host(world, origin_ip), None, Some(port), None);
            ("/https/api.internal/x".into(), vec![])
        }
        Cause::ShortBody => {
            let addr = misbehaving_origin(Misbehaviour::ShortBody, None).await;
            set_service(
                world,
                ip_host(world, loopback),
                Some(addr.port()),
                None,
                None,
            );
            (http("api.internal"), vec![])
        }
        Cause::ConnectionCapFull => {
            let arrived = Arc::new(Notify::new());
            let addr = misbehaving_origin(Misbehaviour::Stall, Some(arrived.clone())).await;
            set_service(
                world,
                ip_host(world, loopback),
                Some(addr.port()),
                None,
                None,
            );
            within(
                "iris routes the row's service",
                world.stack.routes_current(),
            )
            .await
            .expect("reading the directory");
            // A first script request takes the service's only connection and stalls there.
            let mut first = TcpStream::connect(world.stack.script_addr).await.unwrap();
            let request = format!(
                "GET {} HTTP/1.1\r\nhost: script\r\n\r\n",
                http("api.internal")
            );
            first.write_all(request.as_bytes()).await.unwrap();
            within("the first request reaches the origin", arrived.notified()).await;
            (http("api.internal"), vec![Box::new(first)])
        }
        Cause::FlowLimitFull => {
            let addr = misbehaving_origin(Misbehaviour::Stall, None).await;
            set_service(
                world,
                ip_host(world, loopback),
                Some(addr.port()),
                None,
                None,
            );
            // Another client of the tunnel holds the connector's only flow (on the new route:
            // the old one resolved a hostname, and its DNS would take the flow).
            within(
                "iris routes the row's service",
                world.stack.routes_current(),
            )
            .await
            .expect("reading the directory");
            let holder = hold_tunnel_flow(world).await;
            (http("api.internal"), vec![Box::new(holder)])
        }
        Cause::NoConnector => {
            world.stop_connector();
            within(
                "the connector is gone",
                world
                    .stack
                    .registry()
                    .wait_for_no_connection(world.tunnel_id),
            )
            .await;
            (http("api.internal"), vec![])
        }
        Cause::DeletedService => {
            world
                .stack
                .directory
                .delete_service(world.service_id)
                .unwrap();
            (http("api.internal"), vec![])
        }
    }
}

// === the service ===

fn ip_host(world: &RealWorld, ip: Ipv4Addr) -> HostInput {
    HostInput::ips(Some(ip), None, world.tunnel_id)
}

fn name_host(world: &RealWorld, name: &str) -> HostInput {
    HostInput {
        hostname: Some(name.into()),
        resolver_network: Some(ResolverNetworkInput {
            virtual_network_id: None,
            tunnel_id: Some(world.tunnel_id.to_string()),
            resolver_ips: Some(vec![world.dns.addr.to_string()]),
        }),
        ..HostInput::default()
    }
}

/// Replaces the bound service (iris reads the directory on every CONNECT).
fn set_service(
    world: &RealWorld,
    host: HostInput,
    http_port: Option<u16>,
    https_port: Option<u16>,
    tls_settings: Option<TlsSettingsInput>,
) {
    let mut input = ServiceInput::http("api", host);
    input.http_port = http_port.map(i64::from);
    input.https_port = https_port.map(i64::from);
    input.tls_settings = tls_settings;
    world
        .stack
        .directory
        .replace_service(world.service_id, &input)
        .expect("a valid service");
}

/// Puts the DNS server back to answering when the row is over.
struct DnsModeReset(wvpc_tests::dns::DnsTable);

impl Drop for DnsModeReset {
    fn drop(&mut self) {
        self.0.set_mode(DnsMode::Answer);
    }
}

// === origins that fail on purpose ===

fn closed_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener with a backlog of one that never accepts, its queue filled by one connection:
/// further SYNs are dropped, so dials to it time out (on loopback, with nothing else).
fn full_backlog_listener() -> (SocketAddr, Keep) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (addr, vec![Box::new(socket), Box::new(filler)])
}

#[derive(Debug, Clone, Copy)]
enum Misbehaviour {
    /// Read the request, close.
    HangUp,
    /// Promise 1000 bytes, send 5, close.
    ShortBody,
    /// Send a head promising 10 bytes, then nothing, for as long as the test runs.
    Stall,
}

/// A raw TCP origin that reads each request head and then misbehaves; `arrived` is notified
/// once per request read.
async fn misbehaving_origin(how: Misbehaviour, arrived: Option<Arc<Notify>>) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let arrived = arrived.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                if let Some(arrived) = arrived {
                    arrived.notify_one();
                }
                match how {
                    Misbehaviour::HangUp => {}
                    Misbehaviour::ShortBody => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nshort")
                            .await;
                    }
                    Misbehaviour::Stall => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                            .await;
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    addr
}

async fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// An HTTP/1.1 origin behind TLS with a self-signed certificate for `name`.
async fn self_signed_tls_origin(name: &str) -> SocketAddr {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake here.
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    addr
}

/// A CONNECT straight to iris for the bound service, held open: one tunnel flow in use.
async fn hold_tunnel_flow(world: &RealWorld) -> TcpStream {
    let mut stream = TcpStream::connect(world.stack.iris_addr).await.unwrap();
    let id = world.service_id;
    let connect = format!(
        "CONNECT {id}:80 HTTP/1.1\r\nhost: {id}:80\r\nwvpc-service-id: {id}\r\n\
         wvpc-scheme: http\r\n\r\n"
    );
    stream.write_all(connect.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    within("iris answers the CONNECT", stream.read_exact(&mut answer))
        .await
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200", "iris opened the flow");
    stream
}

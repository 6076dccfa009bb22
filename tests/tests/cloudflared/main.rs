//! Interop with the stock `cloudflared` connector: the stack `wvpc dev` runs, a tunnel created
//! with `wvpc tunnel create` (its cloudflared credentials file), the edge CA from
//! `wvpc edge ca export`, and cloudflared started exactly as docs/cloudflared.md tells an
//! operator. Requests from a script reach a private origin through it, DNS for the service's
//! hostname included, over datagram v3 and v2.
//!
//! Runs when `CLOUDFLARED` names a cloudflared binary (`CLOUDFLARED=/path/to/cloudflared cargo
//! test -p wvpc-tests --test cloudflared`); otherwise each test says that it skipped. Each test
//! re-runs itself in a user + network namespace with only loopback, so cloudflared's own
//! lookups on the internet cannot leave the host.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use uuid::Uuid;
use wvpc_cli::commands::edge::{CaCommand, EdgeCommand};
use wvpc_cli::commands::tunnel::TunnelCommand;
use wvpc_cli::{Cli, Command};
use wvpc_directory::{Directory, HostInput, NetworkInput, ResolverNetworkInput, ServiceInput};
use wvpc_iris::{FlowContext, TunnelPool as _};
use wvpc_platform::stack::{Stack, StackConfig};
use wvpc_runtime::{ScriptConfig, VpcNetworkBinding, VpcServiceBinding};
use wvpc_schemas::NetworkTarget;
use wvpc_tests::dns::{DnsServer, DnsTable};
use wvpc_tests::origin::Origin;
use wvpc_tests::stock_cloudflared::{
    Cloudflared, CloudflaredProcess, Isolation, RunOptions, isolated,
};
use wvpc_tests::{TempDir, client, guests, trace_init, within};
use wvpc_tunnel::DatagramVersion;

/// The origin's address: a second loopback address, as a private host would be.
const ORIGIN_IP: &str = "127.0.0.2";
/// Resolved by the DNS server named in the service's `resolver_ips`.
const NAME_WITH_RESOLVER: &str = "api.internal";
/// Resolved by cloudflared's virtual resolver, i.e. its `--dns-resolver-addrs`.
const NAME_VIRTUAL: &str = "virtual.internal";
/// TEST-NET-2: in the test's network namespace nothing routes there.
const UNROUTABLE_IP: &str = "198.51.100.7";

/// Writes to stderr past the test harness's capture, so a skip is always visible.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The binary, or `None` after saying why the test does nothing.
fn cloudflared(test: &str) -> Option<Cloudflared> {
    let Some(found) = Cloudflared::from_env() else {
        say(&format!(
            "SKIPPED {test}: set CLOUDFLARED=/path/to/cloudflared to run the interop tests \
             against the stock connector"
        ));
        return None;
    };
    let cloudflared = found.expect("probing the cloudflared binary");
    match isolated(test) {
        Isolation::Inside => {
            eprintln!(
                "{test}: {} (isolated network namespace)",
                cloudflared.version
            );
            Some(cloudflared)
        }
        Isolation::Passed => None,
        Isolation::Unavailable(reason) => {
            say(&format!(
                "SKIPPED {test}: cloudflared must run without internet access, and no network \
                 namespace can be made here: {reason}"
            ));
            None
        }
    }
}

/// The real path with stock cloudflared as the tunnel's connector.
struct World {
    stack: Stack,
    origin: Origin,
    dns: DnsServer,
    tunnel_id: Uuid,
    cloudflared: CloudflaredProcess,
    _state: TempDir,
}

/// Runs a `wvpc` command in `state` and returns what it printed.
async fn wvpc(state: &TempDir, command: Command) -> String {
    let mut out = Vec::new();
    let cli = Cli {
        state: state.path().to_owned(),
        directory: None,
        otlp_endpoint: None,
        api: wvpc_cli::remote::ApiArgs {
            api: None,
            account: None,
        },
        command,
    };
    wvpc_cli::run(cli, &mut out).await.expect("wvpc command");
    String::from_utf8(out).unwrap()
}

fn hostname_service(
    hostname: &str,
    tunnel: Uuid,
    resolver: Option<String>,
    port: u16,
) -> ServiceInput {
    let mut input = ServiceInput::http(
        "api",
        HostInput {
            hostname: Some(hostname.into()),
            resolver_network: Some(ResolverNetworkInput {
                virtual_network_id: None,
                tunnel_id: Some(tunnel.to_string()),
                resolver_ips: resolver.map(|r| vec![r]),
            }),
            ..HostInput::default()
        },
    );
    input.http_port = Some(i64::from(port));
    input
}

/// Where the tunnel's one service points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `NAME_WITH_RESOLVER`, resolved by the DNS server in `resolver_ips`.
    WithResolver,
    /// `NAME_VIRTUAL` without `resolver_ips`: cloudflared's virtual resolver.
    Virtual,
    /// The origin's address on a port nothing listens on.
    ClosedPort,
    /// An IPv4 address nothing routes to.
    Unroutable,
    /// The origin's IPv4 address, with cloudflared allowing a single flow.
    OneFlow,
    /// The sockets script with a `vpc_networks` binding `NET` to the tunnel: the URL or the
    /// `connect()` address picks the destination.
    Network,
}

impl World {
    async fn start(
        cloudflared: &Cloudflared,
        datagram_v3: bool,
        ha_connections: usize,
        target: Target,
    ) -> World {
        trace_init();
        let state = TempDir::new("cloudflared");
        let origin = Origin::start(ORIGIN_IP).await.expect("origin");
        let origin_ip: IpAddr = ORIGIN_IP.parse().unwrap();
        let dns = DnsServer::start(
            DnsTable::new()
                .with(NAME_WITH_RESOLVER, origin_ip)
                .with(NAME_VIRTUAL, origin_ip),
        )
        .await
        .expect("DNS server");

        // What an operator does: create the tunnel (which writes cloudflared's credentials
        // file) and export the edge CA.
        let created = wvpc(
            &state,
            Command::Tunnel(TunnelCommand::Create {
                name: "office".into(),
                json: true,
            }),
        )
        .await;
        let created: serde_json::Value = serde_json::from_str(&created).unwrap();
        let tunnel_id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
        let credentials = PathBuf::from(created["credentials_file"].as_str().unwrap());
        let ca = state.path().join("exported-ca.pem");
        wvpc(
            &state,
            Command::Edge(EdgeCommand::Ca(CaCommand::Export {
                out: Some(ca.clone()),
            })),
        )
        .await;

        let input = match target {
            Target::WithResolver | Target::Network => hostname_service(
                NAME_WITH_RESOLVER,
                tunnel_id,
                Some(dns.addr.to_string()),
                origin.addr.port(),
            ),
            Target::Virtual => hostname_service(NAME_VIRTUAL, tunnel_id, None, origin.addr.port()),
            Target::ClosedPort => {
                let closed = std::net::TcpListener::bind((ORIGIN_IP, 0)).unwrap();
                let port = closed.local_addr().unwrap().port();
                drop(closed);
                hostname_service(NAME_VIRTUAL, tunnel_id, None, port)
            }
            Target::Unroutable | Target::OneFlow => {
                let (ip, port) = match target {
                    Target::OneFlow => (ORIGIN_IP, origin.addr.port()),
                    _ => (UNROUTABLE_IP, 80),
                };
                let mut input = ServiceInput::http(
                    "api",
                    HostInput {
                        ipv4: Some(ip.into()),
                        network: Some(NetworkInput {
                            virtual_network_id: None,
                            tunnel_id: Some(tunnel_id.to_string()),
                        }),
                        ..HostInput::default()
                    },
                );
                input.http_port = Some(i64::from(port));
                input
            }
        };
        let directory = Directory::open(state.path()).unwrap();
        let service = directory.create_service(&input).unwrap();
        let stack = Stack::start(StackConfig {
            directory: None,
            state: state.path().to_owned(),
            script: ScriptConfig {
                name: "proxy".into(),
                main: PathBuf::from(if target == Target::Network {
                    guests::SOCKETS
                } else {
                    guests::PROXY
                }),
                vpc_services: vec![VpcServiceBinding {
                    binding: "API".into(),
                    service_id: service.service_id,
                }],
                vpc_networks: if target == Target::Network {
                    vec![VpcNetworkBinding {
                        binding: "NET".into(),
                        network: NetworkTarget::Tunnel(tunnel_id),
                    }]
                } else {
                    Vec::new()
                },
                limits: Default::default(),
            },
            listen: "127.0.0.1:0".parse().unwrap(),
            edge_listen: "127.0.0.1:0".parse().unwrap(),
            server: Default::default(),
            exchange_tap: None,
        })
        .await
        .expect("starting the stack");

        let options = RunOptions {
            edges: vec![stack.edge_addr; ha_connections],
            ca,
            credentials,
            tunnel_id,
            dns_resolvers: vec![dns.addr],
            datagram_v3,
            ha_connections,
            max_active_flows: (target == Target::OneFlow).then_some(1),
        };
        let mut process = cloudflared
            .run(&options, &state.path().join("cloudflared.log"))
            .expect("starting cloudflared");
        let registered = tokio::time::timeout(
            Duration::from_secs(30),
            stack
                .registry()
                .wait_for_connections(tunnel_id, ha_connections),
        )
        .await;
        if registered.is_err() {
            panic!(
                "cloudflared did not register {ha_connections} connection(s) within 30 s \
                 (exited: {:?})\ncommand: {}\nlog:\n{}",
                process.exited(),
                process.command,
                process.log()
            );
        }
        World {
            stack,
            origin,
            dns,
            tunnel_id,
            cloudflared: process,
            _state: state,
        }
    }

    /// A GET through the script; on failure the message carries cloudflared's log.
    async fn get(&self, path: &str) -> client::Reply {
        within(path, client::get(self.stack.script_addr, path)).await
    }

    fn log(&self) -> String {
        self.cloudflared.log()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Shown by the test harness when the test fails (or with --nocapture).
        println!(
            "--- cloudflared: {}\n{}",
            self.cloudflared.command,
            self.cloudflared.log()
        );
    }
}

/// What every datagram version must deliver: requests through the tunnel, DNS through the
/// tunnel to `resolver_ips` and to the virtual resolver, and cloudflared's dial errors as
/// codes. One world per service target (the binding-worker keeps origin connections per
/// service, so changing a service's target under it would not dial again).
async fn requests_flow_through(cloudflared: &Cloudflared, datagram_v3: bool) {
    let w = World::start(cloudflared, datagram_v3, 1, Target::WithResolver).await;
    let conns = w.stack.registry().connections(w.tunnel_id);
    assert_eq!(conns.len(), 1, "{}", w.log());
    let expected = if datagram_v3 {
        DatagramVersion::V3
    } else {
        DatagramVersion::V2
    };
    assert_eq!(
        conns[0].datagram_version, expected,
        "{:?}",
        conns[0].features
    );
    assert_eq!(
        conns[0]
            .features
            .iter()
            .any(|f| f == cloudflared.v3_feature),
        datagram_v3,
        "{:?}",
        conns[0].features
    );

    let reply = w.get("/hello?via=cloudflared").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), w.log());
    assert_eq!(reply.text(), "hello from origin: /hello?via=cloudflared");
    let seen = w.origin.seen();
    assert_eq!(
        seen.last().unwrap().host.as_deref(),
        Some(NAME_WITH_RESOLVER)
    );
    // The name was resolved through the tunnel by the service's resolver, once per family.
    assert_eq!(
        w.dns.table.query_count(NAME_WITH_RESOLVER, RecordType::A),
        1
    );
    assert_eq!(
        w.dns
            .table
            .query_count(NAME_WITH_RESOLVER, RecordType::AAAA),
        1
    );
    // A large body streams back intact, on the same origin connection.
    const BIG: usize = 2 * 1024 * 1024 + 5;
    let reply = w.get(&format!("/big/{BIG}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), BIG);
    assert!(wvpc_tests::origin::is_pattern(&reply.body));
    drop(w);

    // Without resolver_ips, iris asks cloudflared's virtual resolver, which forwards to
    // --dns-resolver-addrs.
    let w = World::start(cloudflared, datagram_v3, 1, Target::Virtual).await;
    let reply = w.get("/virtual").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), w.log());
    assert_eq!(reply.text(), "hello from origin: /virtual");
    assert_eq!(w.dns.table.query_count(NAME_VIRTUAL, RecordType::A), 1);
    assert_eq!(w.dns.table.query_count(NAME_VIRTUAL, RecordType::AAAA), 1);
    drop(w);

    // cloudflared's dial errors come back as codes: a closed port …
    let w = World::start(cloudflared, datagram_v3, 1, Target::ClosedPort).await;
    let reply = w.get("/refused").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "ProxyError: connection_refused",
        "{}",
        w.log()
    );
    drop(w);

    // … and an address nothing routes to.
    let w = World::start(cloudflared, datagram_v3, 1, Target::Unroutable).await;
    let reply = w.get("/unroutable").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "ProxyError: destination_ip_unroutable",
        "{}",
        w.log()
    );
    drop(w);

    // … and its flow limit (`FlowConnectRateLimited`) as rate_limited: one flow held open
    // through the tunnel takes the only slot.
    let w = World::start(cloudflared, datagram_v3, 1, Target::OneFlow).await;
    let held = w
        .stack
        .registry()
        .open_tcp(w.tunnel_id, w.origin.addr, &FlowContext::default())
        .await
        .expect("the first flow fits the limit");
    let reply = w.get("/limited").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.text(), "ProxyError: rate_limited", "{}", w.log());
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_cloudflared_serves_a_tunnel_over_datagram_v3() {
    let Some(cloudflared) = cloudflared("stock_cloudflared_serves_a_tunnel_over_datagram_v3")
    else {
        return;
    };
    requests_flow_through(&cloudflared, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_cloudflared_serves_a_tunnel_over_datagram_v2() {
    let Some(cloudflared) = cloudflared("stock_cloudflared_serves_a_tunnel_over_datagram_v2")
    else {
        return;
    };
    requests_flow_through(&cloudflared, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_cloudflared_registers_one_connection_per_edge_address() {
    let Some(cloudflared) =
        cloudflared("stock_cloudflared_registers_one_connection_per_edge_address")
    else {
        return;
    };
    let w = World::start(&cloudflared, true, 2, Target::WithResolver).await;
    let conns = w.stack.registry().connections(w.tunnel_id);
    let mut indexes: Vec<u8> = conns.iter().map(|c| c.conn_index).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, [0, 1], "{conns:?}");
    assert_eq!(
        conns[0].client_id, conns[1].client_id,
        "one connector process"
    );
    for i in 0..4 {
        let reply = w.get(&format!("/ha/{i}")).await;
        assert_eq!(reply.status, 200, "{}\n{}", reply.text(), w.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_cloudflared_carries_a_network_bindings_fetches_and_sockets() {
    let Some(cloudflared) =
        cloudflared("stock_cloudflared_carries_a_network_bindings_fetches_and_sockets")
    else {
        return;
    };
    let w = World::start(&cloudflared, true, 1, Target::Network).await;
    let port = w.origin.addr.port();
    // The URL's IP and port are the destination.
    let reply = w
        .get(&format!(
            "/fetch?binding=NET&url=http://{ORIGIN_IP}:{port}/by-ip"
        ))
        .await;
    assert_eq!(
        reply.text(),
        "200\nhello from origin: /by-ip",
        "{}",
        w.log()
    );
    // A name, resolved by cloudflared's virtual resolver.
    let reply = w
        .get(&format!(
            "/fetch?binding=NET&url=http://{NAME_VIRTUAL}:{port}/by-name"
        ))
        .await;
    assert_eq!(
        reply.text(),
        "200\nhello from origin: /by-name",
        "{}",
        w.log()
    );
    // A socket through cloudflared: raw bytes both ways, the script's half-close included.
    let reply = within(
        "a socket through cloudflared",
        client::send(
            w.stack.script_addr,
            "POST",
            &format!("/echo?binding=NET&addr={ORIGIN_IP}:{port}"),
            bytes::Bytes::from_static(
                b"GET /raw HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n",
            ),
        ),
    )
    .await;
    assert!(
        reply.text().starts_with("HTTP/1.1 200") && reply.text().contains("/raw"),
        "{}\n{}",
        reply.text(),
        w.log()
    );
}

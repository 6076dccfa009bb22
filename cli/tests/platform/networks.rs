//! VPC Networks on the platform as processes: virtual networks and routes made with the CLI
//! over `--api`, a wrangler config with `vpc_networks` deployed with `wvpc deploy`, our
//! connector as `wvpc tunnel run`, and real origins behind it — an HTTP origin reached by IP
//! and by a name resolved through the tunnel, a real `redis-server` spoken to over
//! `connect()`, and (as root) the same private IP in two virtual networks, each inside a
//! network namespace of its own with its own origin and connector.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;
use wvpc_tests::netns::Netns;
use wvpc_tests::origin::Origin;
use wvpc_tests::redis::RedisServer;
use wvpc_tests::{guests, within};

use wvpc_tests::client::{Reply, send_to_host};

use super::{Platform, PrivateNetwork, connector_process_in};

/// The `id` of a `--json` answer.
fn id_of(json: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    value["id"]
        .as_str()
        .or_else(|| value["service_id"].as_str())
        .unwrap_or_else(|| panic!("no id in {json}"))
        .to_owned()
}

/// Writes `config` (JSONC) into the state directory and deploys it with the admin token.
async fn deploy(platform: &Platform, name: &str, config: &str) -> Result<String, String> {
    let path = platform
        .state()
        .join(format!("{name}-{}.jsonc", Uuid::new_v4().simple()));
    std::fs::write(&path, config).unwrap();
    platform
        .wvpc(
            &platform.token,
            &["deploy", "--config", path.to_str().unwrap()],
        )
        .await
}

/// A TCP server on `ip:0` that reads what the first client sends, then resets the
/// connection (RST, not FIN): a peer that fails mid-stream.
async fn resetting_server(ip: Ipv4Addr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut some = [0u8; 4];
            let _ = stream.read_exact(&mut some).await;
            let _ = stream.write_all(b"partial").await;
            // Linger 0: closing sends RST (at once: the socket is non-blocking).
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            drop(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_binding_reaches_destinations_by_ip_and_name_and_connect_speaks_redis() {
    let net = PrivateNetwork::start(&[("api.internal", "127.0.0.2")]).await;
    let origin_port = net.origin("api.internal").addr.port();
    let redis = match RedisServer::start().await {
        Ok(redis) => Some(redis),
        Err(why) => {
            println!("SKIPPED (redis-server) for the connect() part: {why}");
            None
        }
    };
    let reset = resetting_server(Ipv4Addr::new(127, 0, 0, 3)).await;
    let platform = Platform::start().await;
    let (office, credentials) = platform.directory().create_tunnel("office").unwrap();
    let tunnel = office.id.to_string();

    // Routes of the account's default virtual network, over the API.
    platform
        .wvpc(
            &platform.token,
            &["route", "ip", "add", "127.0.0.0/8", "office"],
        )
        .await
        .expect("wvpc route ip add");
    let routes = platform
        .wvpc(&platform.token, &["route", "ip", "list"])
        .await
        .unwrap();
    assert!(routes.contains("127.0.0.0/8"), "{routes}");
    // A malformed CIDR is refused with the field named.
    let refused = platform
        .wvpc(
            &platform.token,
            &["route", "ip", "add", "127.0.0.300/8", "office"],
        )
        .await
        .expect_err("a malformed CIDR");
    assert!(refused.contains("network"), "{refused}");

    let redis_port = redis.as_ref().map_or(6379, |r| r.addr.port()).to_string();
    let cache = id_of(
        &platform
            .wvpc(
                &platform.token,
                &[
                    "service",
                    "create",
                    "cache",
                    "--type",
                    "tcp",
                    "--tcp-port",
                    &redis_port,
                    "--ipv4",
                    "127.0.0.1",
                    "--tunnel-id",
                    &tunnel,
                    "--json",
                ],
            )
            .await
            .expect("a tcp service"),
    );
    let web = id_of(
        &platform
            .wvpc(
                &platform.token,
                &[
                    "service",
                    "create",
                    "web",
                    "--type",
                    "http",
                    "--ipv4",
                    "127.0.0.2",
                    "--http-port",
                    &origin_port.to_string(),
                    "--tunnel-id",
                    &tunnel,
                    "--json",
                ],
            )
            .await
            .expect("an http service without tcp_port"),
    );
    let deployed = deploy(
        &platform,
        "net",
        &format!(
            r#"{{
              "name": "net", "main": "{main}",
              // the URL or address picks the destination
              "vpc_networks": [
                {{ "binding": "NET", "tunnel_id": "{tunnel}" }},
                {{ "binding": "ALL", "network_id": "cf1:network", "remote": true }},
              ],
              "vpc_services": [
                {{ "binding": "DB", "service_id": "{cache}" }},
                {{ "binding": "WEB", "service_id": "{web}" }},
              ],
            }}"#,
            main = guests::SOCKETS,
        ),
    )
    .await
    .expect("deploying a config with vpc_networks");
    assert!(
        deployed.contains("net.local.workers.localhost"),
        "{deployed}"
    );

    let dns = net.dns.addr.to_string();
    let allow_redis = format!("127.0.0.1:{redis_port}");
    let _connector = connector_process_in(
        None,
        &platform,
        &credentials,
        &[platform.edge()],
        &[
            "--dns-resolver-addrs",
            &dns,
            "--allow",
            "127.0.0.2/32",
            "--allow",
            &allow_redis,
            "--allow",
            &reset.to_string(),
        ],
    )
    .await;
    let host = "net.local.workers.localhost";
    let get = |path: String| {
        let platform = &platform;
        async move { platform.until_served(host, &path).await }
    };
    let post = |path: String, body: &'static [u8]| {
        let addr = platform.runtime.addr(0);
        async move { send_to_host(addr, host, "POST", &path, Bytes::from_static(body)).await }
    };
    let fetched = |reply: &Reply, path: &str| {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), format!("200\nhello from origin: {path}"));
    };

    // By IP, through the tunnel binding: the URL's port is the destination's.
    let reply = get(format!(
        "/fetch?binding=NET&url=http://127.0.0.2:{origin_port}/by-ip"
    ))
    .await;
    fetched(&reply, "/by-ip");
    // By name, resolved through the tunnel by the connector's resolver.
    let reply = get(format!(
        "/fetch?binding=NET&url=http://api.internal:{origin_port}/by-name"
    ))
    .await;
    fetched(&reply, "/by-name");
    assert_eq!(
        net.origin("api.internal")
            .seen()
            .last()
            .unwrap()
            .host
            .as_deref(),
        Some(format!("api.internal:{origin_port}").as_str()),
        "the origin sees the URL's host"
    );
    // Through the account's networks: the default virtual network's route picks the tunnel.
    let reply = get(format!(
        "/fetch?binding=ALL&url=http://127.0.0.2:{origin_port}/by-route"
    ))
    .await;
    fetched(&reply, "/by-route");
    // No route covers ::1 in the default virtual network: refused at iris, nothing dialled.
    let reply = get("/fetch?binding=ALL&url=http://[::1]:8080/".into()).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.text(), "ProxyError: destination_ip_unroutable");

    // A socket both ways through the network binding: the origin answers what it was sent
    // after the script's half-close.
    let reply = post(
        format!("/echo?binding=NET&addr=127.0.0.2:{origin_port}"),
        b"GET /over-a-socket HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().starts_with("HTTP/1.1 200") && reply.text().contains("/over-a-socket"),
        "{}",
        reply.text()
    );
    // An address the connector's --allow does not cover.
    let reply = post("/echo?binding=NET&addr=127.0.0.4:80".into(), b"x").await;
    assert_eq!(reply.text(), "ProxyError: destination_ip_prohibited");
    // connect() on an http service without a tcp_port is refused with the reason.
    let reply = post("/echo?binding=WEB&addr=".into(), b"x").await;
    assert_eq!(reply.text(), "ProxyError: http_request_denied");
    // A malformed address never leaves the runtime.
    let reply = post("/echo?binding=NET&addr=127.0.0.2".into(), b"x").await;
    assert_eq!(reply.text(), "ProxyError: destination_not_found");
    // A peer that resets mid-stream: the script sees an error, not a hang.
    let reply = within(
        "the reset reaches the script",
        post(format!("/echo?binding=NET&addr={reset}"), b"ping and more"),
    )
    .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.text().starts_with("ProxyError: "), "{}", reply.text());

    if redis.is_some() {
        // A TCP service: the script speaks RESP to a real redis-server over connect().
        let reply = get("/redis?binding=DB&addr=&key=greeting&value=hello".into()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.text().lines().collect::<Vec<_>>(),
            ["PING +PONG", "SET +OK", "GET $hello"]
        );
        // The same server through the network binding, by address.
        let reply = get(format!(
            "/redis?binding=NET&addr=127.0.0.1:{redis_port}&key=greeting&value=again"
        ))
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().contains("GET $again"), "{}", reply.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ip_in_two_virtual_networks_reaches_two_origins() {
    let (blue_ns, green_ns) = match (Netns::create(), Netns::create()) {
        (Ok(blue), Ok(green)) => (blue, green),
        (Err(why), _) | (_, Err(why)) => {
            println!("SKIPPED (namespaces): {why}");
            return;
        }
    };
    let private: IpAddr = "10.0.0.5".parse().unwrap();
    let mut origins = Vec::new();
    for ns in [&blue_ns, &green_ns] {
        ns.add_loopback_address(private).unwrap();
        let listener = ns.bind_tcp(SocketAddr::new(private, 8080)).unwrap();
        origins.push(Origin::serve_std(listener).unwrap());
    }
    // The edge listens where the namespaces' connectors reach it (their links' test ends).
    let platform = Platform::start_with_edge("0.0.0.0:0").await;
    let edge_port = platform.edge().port();
    let mut connectors = Vec::new();
    let mut vnets = Vec::new();
    for (name, ns) in [("blue", &blue_ns), ("green", &green_ns)] {
        let (tunnel, credentials) = platform.directory().create_tunnel(name).unwrap();
        let vnet = id_of(
            &platform
                .wvpc(&platform.token, &["vnet", "create", name, "--json"])
                .await
                .expect("wvpc vnet create"),
        );
        platform
            .wvpc(
                &platform.token,
                &[
                    "route",
                    "ip",
                    "add",
                    "10.0.0.0/24",
                    &tunnel.id.to_string(),
                    "--vnet",
                    name,
                ],
            )
            .await
            .expect("the same network in a second virtual network is allowed");
        let edge = SocketAddr::new(ns.host_data_ip().into(), edge_port);
        connectors
            .push(connector_process_in(Some(ns), &platform, &credentials, &[edge], &[]).await);
        vnets.push(vnet);
    }
    // The same network twice in one virtual network is refused, naming the field.
    let refused = platform
        .wvpc(
            &platform.token,
            &[
                "route",
                "ip",
                "add",
                "10.0.0.0/24",
                "blue",
                "--vnet",
                "blue",
            ],
        )
        .await
        .expect_err("a duplicate route");
    assert!(refused.contains("network"), "{refused}");

    deploy(
        &platform,
        "vnets",
        &format!(
            r#"{{ "name": "vnets", "main": "{main}",
                 "vpc_networks": [
                   {{ "binding": "BLUE", "network_id": "cf1:vnet:{blue}" }},
                   {{ "binding": "GREEN", "network_id": "cf1:vnet:{green}" }}
                 ] }}"#,
            main = guests::SOCKETS,
            blue = vnets[0],
            green = vnets[1],
        ),
    )
    .await
    .expect("deploying bindings to two virtual networks");
    let host = "vnets.local.workers.localhost";
    for (binding, origin, other) in [("BLUE", 0, 1), ("GREEN", 1, 0)] {
        let path = format!("/fetch?binding={binding}&url=http://10.0.0.5:8080/{binding}");
        let reply = platform.until_served(host, &path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().starts_with("200\n"), "{}", reply.text());
        within(
            "the origin records the request",
            origins[origin].wait_seen(&format!("/{binding}")),
        )
        .await;
        assert!(
            origins[other]
                .seen()
                .iter()
                .all(|seen| !seen.path.contains(binding)),
            "{binding} reached only its own virtual network's origin"
        );
    }
    // A virtual network that a script binds cannot be deleted; the refusal names the script.
    let refused = platform
        .wvpc(&platform.token, &["vnet", "delete", "blue"])
        .await
        .expect_err("deleting a bound virtual network");
    assert!(
        refused.contains("vnets") || refused.contains("route"),
        "{refused}"
    );
    drop(connectors);
}

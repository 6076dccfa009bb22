//! A service's figures as an operator reads them off an iris node: `wvpc service metrics`
//! (connections, errors by category and code, latency) and the node's `/status.json`
//! (the tunnel's live connection, the service's traffic), after real traffic through the
//! separate processes.

use super::*;
use wvpc_observe::client::fetch_report;

/// `wvpc service metrics <id> --json` against the platform's iris node.
async fn service_metrics(platform: &Platform, service: Uuid) -> serde_json::Value {
    let node = format!("http://{}", metrics_of(&platform.iris));
    let out = platform
        .wvpc_local(&[
            "service",
            "metrics",
            &service.to_string(),
            "--node",
            &node,
            "--minutes",
            "5",
            "--json",
        ])
        .await
        .unwrap();
    serde_json::from_str(&out).unwrap_or_else(|err| panic!("{err}: {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn service_metrics_and_the_status_show_a_services_connections_errors_and_tunnel() {
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform = Platform::start().await;
    let directory = platform.directory();
    let (office, service) = tunnel_and_service(&directory, "office", "a", "a.internal", &net);
    // A second service behind the same tunnel, named what the private DNS does not know.
    let gone = unresolvable_service(&directory, office.tunnel_id, &net);
    let connector = connector(&platform, &office).await;
    for (script, bound) in [("proxy", service), ("broken", gone)] {
        platform
            .deploy(&platform.token, script, guests::PROXY, bound, "")
            .await
            .unwrap();
    }
    let (good, bad) = (
        "proxy.local.workers.localhost",
        "broken.local.workers.localhost",
    );
    platform.until(good, "/first", 200, "").await;
    for i in 0..4 {
        let reply = platform.get(good, &format!("/n/{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let failed = platform.until_served(bad, "/").await;
    assert!(failed.text().contains("dns_error"), "{}", failed.text());
    let again = platform.get(bad, "/again").await;
    assert!(again.text().contains("dns_error"), "{}", again.text());

    // The good service: its requests travelled on pooled origin connections, each opened
    // by one CONNECT, none failed; connection latency and the DNS lookup were measured.
    let figures = service_metrics(&platform, service).await;
    let total = &figures["connections"]["total"];
    assert!(total["requests"].as_u64().unwrap() >= 1, "{figures:#}");
    assert_eq!(total["errors"]["client"], 0, "{figures:#}");
    assert_eq!(total["errors"]["bad_upstream"], 0, "{figures:#}");
    assert!(
        total["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{figures:#}"
    );
    assert_eq!(figures["name"], "a");
    assert_eq!(figures["connections"]["nodes"][0]["node"], "iris-test");
    assert!(
        total["dns_cache_misses"].as_u64().unwrap() >= 1,
        "{figures:#}"
    );
    assert!(
        total["dns_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{figures:#}"
    );

    // The broken one: each request tried a CONNECT, which failed; NXDOMAIN is filed under
    // Client as dns_error.
    let figures = service_metrics(&platform, gone).await;
    let total = &figures["connections"]["total"];
    assert_eq!(total["requests"], 2, "{figures:#}");
    assert_eq!(total["errors"]["client"], 2, "{figures:#}");
    assert_eq!(total["codes"][0]["code"], "dns_error", "{figures:#}");
    assert_eq!(total["codes"][0]["category"], "client", "{figures:#}");
    assert_eq!(total["codes"][0]["count"], 2, "{figures:#}");

    // What the terminal shows.
    let node = format!("http://{}", metrics_of(&platform.iris));
    let text = platform
        .wvpc_local(&["service", "metrics", &gone.to_string(), "--node", &node])
        .await
        .unwrap();
    assert!(text.contains("last 15 minutes on 1 node"), "{text}");
    assert!(text.contains("Connections (iris"), "{text}");
    assert!(
        text.contains("Errors by category: Bad Upstream 0 · Client 2 · Internal 0"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["dns_error", "Client", "2"]),
        "{text}"
    );
    // A node that is not an operations listener is named in the error.
    let wrong = platform
        .wvpc_local(&[
            "service",
            "metrics",
            &gone.to_string(),
            "--node",
            &format!("http://{}", platform.runtime.addr(0)),
        ])
        .await
        .unwrap_err();
    assert!(
        wrong.contains(&platform.runtime.addr(0).to_string()),
        "{wrong}"
    );

    // The node's status: the tunnel's live connection and both services' traffic.
    let report = fetch_report(&node, None, None).await.unwrap();
    let tunnel = report
        .tunnels
        .iter()
        .find(|t| t.id == office.tunnel_id.to_string())
        .unwrap_or_else(|| panic!("{report:#?}"));
    assert_eq!(tunnel.name.as_deref(), Some("office"));
    assert_eq!(tunnel.account.as_deref(), Some(directory.account_id()));
    let connection = &tunnel.connections[0];
    assert_eq!(connection.connector_id, connector.client_id.to_string());
    assert_eq!(connection.edge_node, "iris-test");
    assert_eq!(connection.state, "active");
    let listed: Vec<&str> = report.services.iter().map(|s| s.id.as_str()).collect();
    assert!(listed.contains(&service.to_string().as_str()), "{listed:?}");
    assert!(listed.contains(&gone.to_string().as_str()), "{listed:?}");
}

//! `connect()` and `vpc_networks` bindings as a script sees them: the `sockets` guest
//! (`sdk/examples/sockets.rs`) against the fake binding-worker's `connect` (a small Redis, an
//! echo that answers after the script's FIN, resets and refusals) and its fetch echo.

use std::sync::Arc;

use uuid::Uuid;
use wvpc_runtime::{PrefixedOutput, Runtime, RuntimeOptions, ScriptConfig, VpcNetworkBinding};
use wvpc_schemas::NetworkTarget;

use crate::fake_binding_worker::FakeBindingWorker;
use crate::{Client, GUARD, SERVICE, Served, guests};

const TUNNEL: Uuid = Uuid::from_u128(0x0199_d9b2_0000_7000_8000_0000_0000_0001);
const VNET: Uuid = Uuid::from_u128(0x0199_d9b2_0000_7000_8000_0000_0000_0002);

/// The `sockets` guest with `API` → [`SERVICE`] (vpc_services), `NET` → a tunnel, `VNET` →
/// a virtual network and `ALL` → `cf1:network` (vpc_networks), and these `limits`.
async fn serve_sockets(fake: &FakeBindingWorker, limits: &str) -> Served {
    serve_sockets_through(fake.addr, limits).await
}

/// [`serve_sockets`] with the binding-worker at `binding_worker`.
async fn serve_sockets_through(binding_worker: std::net::SocketAddr, limits: &str) -> Served {
    let main = guests::guests().sockets.display().to_string();
    serve_main(binding_worker, &main, limits).await
}

/// `examples/sockets-js`: the JavaScript version of the `sockets` guest's `/redis` and
/// `/echo`, built by the runtime when it loads it.
const SOCKETS_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/sockets-js/src/index.js"
);

/// Whether JavaScript scripts can be built here; says why not.
fn javascript_builds() -> bool {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED (node): JavaScript scripts need Node.js ≥ 20 and npm to build");
    }
    ok
}

/// The script at `main` with the bindings of [`serve_sockets`].
async fn serve_main(binding_worker: std::net::SocketAddr, main: &str, limits: &str) -> Served {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("wrangler.jsonc");
    let config = format!(
        r#"{{ "name": "sockets-test", "main": {main:?}, "limits": {limits},
              "vpc_services": [{{ "binding": "API", "service_id": "{SERVICE}" }}] }}"#
    );
    std::fs::write(&config_path, config).expect("write config");
    let mut config = ScriptConfig::load(&config_path).expect("valid config");
    for (binding, network) in [
        ("NET", NetworkTarget::Tunnel(TUNNEL)),
        ("VNET", NetworkTarget::VirtualNetwork(VNET)),
        ("ALL", NetworkTarget::AllNetworks),
    ] {
        config.vpc_networks.push(VpcNetworkBinding {
            binding: binding.into(),
            network,
        });
    }
    let options = RuntimeOptions {
        binding_workers: vec![binding_worker],
        binding_secret: None,
        account: "acct-1".into(),
        exchange_tap: None,
        metrics: None,
    };
    let runtime = Arc::new(
        Runtime::with_output(&config, options, Arc::new(PrefixedOutput)).expect("runtime"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(runtime.clone().serve(listener));
    Served {
        addr,
        runtime,
        _config_dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_commands_and_replies_cross_a_network_socket() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let answer = client
        .get("/redis?binding=NET&addr=resp.test:6379&key=greeting&value=hello%20world")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "PING +PONG\nSET +OK\nGET $hello world\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_script_half_closes_and_still_reads_the_answer() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    // More than the flow-control windows of both directions (256 KiB each), so both wait
    // for the other side on the way.
    let body: String = (0..100_000)
        .map(|i| format!("{:07}\n", i % 9_999_999))
        .collect();
    let answer = client
        .send(
            "POST",
            "/echo?binding=NET&addr=db.internal:5432",
            &[],
            &body,
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        answer.body.as_ref().map(|b| &b[..80.min(b.len())])
    );
    let text = answer.text();
    let (echoed, trailer) = text.rsplit_once('\n').expect("the line after the FIN");
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the bytes came back changed");
    // The fake writes this line only after the script's FIN: the script half-closed and then
    // read the rest.
    assert_eq!(
        trailer,
        format!(
            "connected address=db.internal:5432 service= tunnel={TUNNEL} network= binding=NET \
             script=sockets-test account=acct-1"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_stops_reading_holds_the_script_back_within_the_window() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    // 2 MiB: the runtime may keep only a window of it unanswered while the far side reads
    // nothing (more would overflow the far side's inbox, which refuses it: a 502).
    let body: String = (0..262_144).map(|i| format!("{:07}\n", i)).collect();
    let echo = client.send("POST", "/echo?binding=NET&addr=stall.test:1", &[], &body);
    let release = async {
        fake.held().await; // the far side holds a full window and reads nothing
        fake.release();
    };
    let (answer, ()) = tokio::join!(echo, release);
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let (echoed, trailer) = text.rsplit_once('\n').expect("the line after the FIN");
    assert!(
        echoed == body,
        "the bytes came back changed ({} bytes)",
        echoed.len()
    );
    assert!(
        trailer.starts_with("connected address=stall.test:1 "),
        "{trailer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_binding_kind_names_its_target_in_the_connect() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let cases = [
        ("API", "", format!("service={SERVICE} tunnel= network=")),
        (
            "VNET",
            "[fd00::5]:6379",
            format!("service= tunnel= network=cf1:vnet:{VNET}"),
        ),
        (
            "ALL",
            "10.0.0.5:22",
            "service= tunnel= network=cf1:network".to_owned(),
        ),
    ];
    for (binding, addr, target) in cases {
        let answer = client
            .send(
                "POST",
                &format!("/echo?binding={binding}&addr={addr}"),
                &[],
                "hi",
            )
            .await;
        assert_eq!(
            (answer.status, answer.text().to_owned()),
            (
                200,
                format!(
                    "hi\nconnected address={addr} {target} binding={binding} \
                     script=sockets-test account=acct-1"
                )
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_reach_the_script_as_codes() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let cases = [
        // The far side's abort, after some bytes: its code, not a hang nor a clean end.
        ("NET", "reset.test:7000", "connection_read_timeout"),
        // `opened(error)`.
        ("NET", "refused.test:7000", "connection_refused"),
        ("VNET", "nxdomain.test:7000", "dns_error"),
        // Refused at once, without a connection.
        ("NOPE", "db.internal:5432", "proxy_configuration_error"),
        ("NET", "db.internal", "destination_not_found"),
        ("NET", "db.internal:0", "destination_not_found"),
        ("NET", "fd00::1:80", "destination_not_found"),
        ("NET", "", "destination_not_found"),
        ("API", "db.internal:5432", "destination_not_found"),
    ];
    for (binding, addr, code) in cases {
        let answer = client
            .send(
                "POST",
                &format!("/echo?binding={binding}&addr={addr}"),
                &[],
                "ping",
            )
            .await;
        assert_eq!(
            (answer.status, answer.text()),
            (502, format!("ProxyError: {code}").as_str()),
            "{binding} {addr}"
        );
    }
    // The script carries on normally afterwards.
    let answer = client
        .send(
            "POST",
            "/echo?binding=NET&addr=db.internal:5432",
            &[],
            "fine",
        )
        .await;
    assert!(
        answer.text().starts_with("fine\nconnected"),
        "{}",
        answer.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binding_worker_lost_or_gone_is_a_code_not_a_hang() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    // The binding-worker connection breaks while the socket is open.
    let answer = client
        .send("POST", "/echo?binding=NET&addr=drop.test:1", &[], "ping")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: connection_terminated")
    );
    // The binding-worker restarts on its port: the next connect finds the old connection
    // dead and opens on a new one.
    let addr = fake.stop();
    let fake = FakeBindingWorker::start_on(addr, None);
    let answer = client
        .send("POST", "/echo?binding=NET&addr=db.internal:1", &[], "again")
        .await;
    assert!(
        answer.text().starts_with("again\nconnected"),
        "{}",
        answer.text()
    );
    // No binding-worker at all.
    drop(fake);
    let served = serve_sockets_through(addr, "{}").await;
    let answer = Client::connect(served.addr)
        .await
        .send("POST", "/echo?binding=NET&addr=db.internal:1", &[], "x")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: destination_unavailable")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sockets_count_against_subrequests_and_hold_connections() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, r#"{ "subrequests": 2 }"#).await;
    let mut client = Client::connect(served.addr).await;
    let answer = client
        .get("/open?binding=NET&addr=db.internal:1&count=3")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "opened 2; ProxyError: subrequest_limit_reached")
    );
    // Per request.
    let answer = client
        .get("/open?binding=NET&addr=db.internal:1&count=2")
        .await;
    assert_eq!((answer.status, answer.text()), (200, "opened 2"));

    // An open socket holds its connection slot until it is closed.
    let served = serve_sockets(&fake, r#"{ "connections": 2, "queued_connections": 0 }"#).await;
    let mut client = Client::connect(served.addr).await;
    let answer = client
        .get("/open?binding=NET&addr=db.internal:1&count=3")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "opened 2; ProxyError: connection_limit_reached")
    );
    // The slots were given back with the sockets at the end of that request.
    let answer = client
        .get("/open?binding=NET&addr=db.internal:1&count=2")
        .await;
    assert_eq!((answer.status, answer.text()), (200, "opened 2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_left_open_is_reset_when_its_request_ends() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let answer = client.get("/stash?binding=NET&addr=db.internal:5432").await;
    assert_eq!((answer.status, answer.text()), (200, "stashed"));
    // The far side sees the reset although the instance (and the socket in its global) lives
    // on for the next request.
    tokio::time::timeout(GUARD, fake.socket_reset())
        .await
        .expect("the socket was reset at the end of its request");
    let answer = client.get("/stashed").await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: connection_terminated")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_fetch_sends_the_network_and_the_url_as_destination() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let cases = [
        ("NET", format!("tunnel={TUNNEL} network=")),
        ("VNET", format!("tunnel= network=cf1:vnet:{VNET}")),
        ("ALL", "tunnel= network=cf1:network".to_owned()),
    ];
    for (binding, network) in cases {
        let answer = client
            .get(&format!(
                "/fetch?binding={binding}&url=http%3A%2F%2F10.0.0.5%3A8080%2Fx%3Fy%3D1"
            ))
            .await;
        let text = answer.text();
        assert_eq!(answer.status, 200, "{text}");
        assert!(text.starts_with("200\n"), "{text}");
        assert!(text.contains("url=http://10.0.0.5:8080/x?y=1\n"), "{text}");
        assert!(
            text.contains(&format!("service= binding={binding} script=sockets-test")),
            "{text}"
        );
        assert!(text.contains(&format!("\nnetwork {network}\n")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_redirect_goes_to_the_location_through_the_same_binding() {
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    // 10.0.0.5:8080 answers 302 to 10.0.0.6:9090: the Location's host and port are the next
    // destination, still inside the tunnel of `NET`.
    let answer = client
        .get(
            "/fetch?binding=NET&url=http%3A%2F%2F10.0.0.5%3A8080%2Fredirect%2F302%3Fto%3D\
             http%3A%2F%2F10.0.0.6%3A9090%2Fy",
        )
        .await;
    let text = answer.text();
    assert!(text.starts_with("200\n"), "{text}");
    assert!(text.contains("url=http://10.0.0.6:9090/y\n"), "{text}");
    assert!(
        text.contains(&format!("\nnetwork tunnel={TUNNEL} network=\n")),
        "{text}"
    );
}

/// A real `redis-server` on a loopback port, stopped on drop.
struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// `None` (after printing why) when redis-server is not installed.
    async fn start() -> Option<Self> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::tempdir().expect("temp dir");
        // A port that was free a moment ago; another start takes the next one if it is not.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = std::process::Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(err) => {
                    println!("SKIPPED (redis-server): cannot run {binary}: {err}");
                    return None;
                }
            };
            // Ready once it answers PING; a bounded wait as a hang guard.
            let deadline = std::time::Instant::now() + GUARD;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was taken
                }
                if ping(port).await {
                    return Some(Self {
                        child,
                        port,
                        _dir: dir,
                    });
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

/// `GET key` straight to Redis: the raw reply.
async fn redis_get(port: u16, key: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to redis");
    let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    stream
        .write_all(command.as_bytes())
        .await
        .expect("send GET");
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") || reply.iter().filter(|&&b| b == b'\n').count() < 2 {
        let mut buf = [0; 256];
        let n = stream.read(&mut buf).await.expect("read the reply");
        assert!(n > 0, "redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_guest_speaks_to_a_real_redis_server() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fake = FakeBindingWorker::start();
    let served = serve_sockets(&fake, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let port = redis.port;
    let answer = client
        .get(&format!(
            "/redis?binding=NET&addr=127.0.0.1:{port}&key=user%3A1&value=ada%20lovelace"
        ))
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "PING +PONG\nSET +OK\nGET $ada lovelace\n")
    );
    // What the script wrote is really in Redis.
    assert_eq!(redis_get(port, "user:1").await, "$12\r\nada lovelace\r\n");
    drop(redis);
    // Nothing listens any more: the dial is refused, and the script says so.
    let answer = client
        .get(&format!("/redis?binding=NET&addr=127.0.0.1:{port}"))
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (502, "ProxyError: connection_refused")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_script_speaks_redis_half_closes_and_sees_failures_as_codes() {
    if !javascript_builds() {
        return;
    }
    let fake = FakeBindingWorker::start();
    let served = serve_main(fake.addr, SOCKETS_JS, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let answer = client
        .get("/redis?binding=NET&addr=resp.test:6379&key=greeting&value=hello%20world")
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "PING +PONG\nSET +OK\nGET $hello world\n")
    );
    // Half-close: the fake answers its last line only after the script's FIN. More than the
    // flow-control windows both ways.
    let body: String = (0..100_000).map(|i| format!("{i:07}\n")).collect();
    let answer = client
        .send(
            "POST",
            "/echo?binding=NET&addr=db.internal:5432",
            &[],
            &body,
        )
        .await;
    assert_eq!(answer.status, 200);
    let text = answer.text();
    let (echoed, trailer) = text.rsplit_once('\n').expect("the line after the FIN");
    assert!(echoed == body, "the bytes came back changed");
    assert!(
        trailer.starts_with("connected address=db.internal:5432"),
        "{trailer}"
    );
    for (binding, addr, code) in [
        ("NET", "reset.test:7000", "connection_read_timeout"),
        ("NET", "refused.test:7000", "connection_refused"),
        ("VNET", "nxdomain.test:7000", "dns_error"),
        ("NET", "db.internal", "destination_not_found"),
        ("API", "db.internal:5432", "destination_not_found"),
    ] {
        let answer = client
            .send(
                "POST",
                &format!("/echo?binding={binding}&addr={addr}"),
                &[],
                "ping",
            )
            .await;
        assert_eq!(
            (answer.status, answer.text()),
            (502, format!("ProxyError: {code}").as_str()),
            "{binding} {addr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_script_speaks_to_a_real_redis_server() {
    if !javascript_builds() {
        return;
    }
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fake = FakeBindingWorker::start();
    let served = serve_main(fake.addr, SOCKETS_JS, "{}").await;
    let mut client = Client::connect(served.addr).await;
    let port = redis.port;
    let answer = client
        .get(&format!(
            "/redis?binding=NET&addr=127.0.0.1:{port}&key=user%3A2&value=grace%20hopper"
        ))
        .await;
    assert_eq!(
        (answer.status, answer.text()),
        (200, "PING +PONG\nSET +OK\nGET $grace hopper\n")
    );
    assert_eq!(redis_get(port, "user:2").await, "$12\r\ngrace hopper\r\n");
}

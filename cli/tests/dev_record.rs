//! `wvpc dev --record` as a new user runs it: a tunnel and a service made with `wvpc`, the
//! proxy example served by `wvpc dev --record`, a connector run with `wvpc tunnel run`, an
//! origin on loopback; then `wvpc dev` killed, the connector and the origin gone, and the
//! recorded file replayed with `wvpc dev --mock`, answering as the origin did.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;

mod support;

use support::{Dir, Running, curl, wvpc};

/// An origin answering every request with a JSON body; it stops when the listener drops.
fn origin() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let accepting = listener.try_clone().unwrap();
    std::thread::spawn(move || {
        for stream in accepting.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = r#"{"id":1,"name":"Ada"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-origin: private\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    listener
}

fn after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split([' ', ')']).next())
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
        .to_owned()
}

#[test]
fn dev_record_writes_what_dev_mock_replays_with_no_connector() {
    let state = Dir::new("dev-record-state");
    let project = Dir::new("dev-record-project");
    let origin = origin();
    let port = origin.local_addr().unwrap().port().to_string();

    let tunnel = wvpc(state.path())
        .args(["tunnel", "create", "office", "--json"])
        .output()
        .unwrap();
    assert!(tunnel.status.success(), "{tunnel:?}");
    let tunnel: serde_json::Value = serde_json::from_slice(&tunnel.stdout).unwrap();
    let service = wvpc(state.path())
        .args(["service", "create", "api", "--type", "http", "--tunnel-id"])
        .arg(tunnel["id"].as_str().unwrap())
        .args(["--ipv4", "127.0.0.1", "--http-port", &port])
        .output()
        .unwrap();
    assert!(service.status.success(), "{service:?}");
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        format!(
            r#"{{ "name": "proxy", "main": {:?}, "vpc_services": [ {{ "binding": "API", "service": "api" }} ] }}"#,
            wvpc_tests::guests::PROXY
        ),
    )
    .unwrap();

    let mut dev = wvpc(state.path());
    dev.args(["dev", "--port", "0", "--edge-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0", "--record", "recorded.jsonc"])
        .current_dir(project.path());
    let dev = Running::spawn(dev);
    let addr = after(&dev.line("ready:"), "http://");
    let edge = dev.line("tunnel edge on");
    dev.line("recording binding exchanges into recorded.jsonc");
    let mut connector = wvpc(state.path());
    connector
        .args(["tunnel", "run", "--ha-connections", "1", "--token"])
        .arg(tunnel["token"].as_str().unwrap())
        .args(["--edge", &after(&edge, "tunnel edge on ")])
        .args(["--cacert", &after(&edge, "--cacert ")]);
    let connector = Running::spawn(connector);

    connector.line("registered:");
    let (status, headers, body) = curl(&addr, "/users/1");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers:?} {body}");
    assert_eq!(body, r#"{"id":1,"name":"Ada"}"#);
    dev.line("recorded API GET /users/1 -> 200");

    // Stopped at once (SIGKILL): the file written so far is whole.
    drop(dev);
    drop(connector);
    drop(origin);
    let text = std::fs::read_to_string(project.path().join("recorded.jsonc")).unwrap();
    assert!(
        text.starts_with("// Recorded by `wvpc dev --record`"),
        "{text}"
    );

    let mut replay = wvpc(state.path());
    replay
        .args(["dev", "--port", "0", "--mock", "recorded.jsonc"])
        .current_dir(project.path());
    let replay = Running::spawn(replay);
    let addr = after(&replay.line("ready:"), "http://");
    let (replayed_status, replayed_headers, replayed_body) = curl(&addr, "/users/1");
    assert_eq!(replayed_status, status);
    assert_eq!(replayed_body, body);
    for header in ["content-type: application/json", "x-origin: private"] {
        assert!(headers.iter().any(|h| h == header), "{headers:?}");
        assert!(
            replayed_headers.iter().any(|h| h == header),
            "{replayed_headers:?}"
        );
    }
}

#[test]
fn dev_record_with_mock_is_refused_saying_why() {
    let state = Dir::new("dev-record-state");
    let project = Dir::new("dev-record-project");
    std::fs::write(
        project.path().join("wrangler.jsonc"),
        r#"{ "name": "proxy", "main": "proxy.wasm", "vpc_services": [] }"#,
    )
    .unwrap();
    let output = wvpc(state.path())
        .args(["dev", "--mock", "--record", "out.jsonc"])
        .current_dir(project.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--record out.jsonc cannot be used with --mock"),
        "{stderr}"
    );
    assert!(!project.path().join("out.jsonc").exists());
}

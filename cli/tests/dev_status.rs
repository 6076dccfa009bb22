//! `wvpc dev --metrics`'s status page in a real browser (headless Chromium), as an operator
//! opens it: a tunnel and a service made with `wvpc`, a connector run with `wvpc tunnel
//! run`, one request through the proxy example that reaches the origin and one that finds
//! it gone; then `/status` shows the connector, the service's two requests and the
//! `connection_refused` the second one caused, with no error in the page. A screenshot is
//! left in the target directory. (Says `SKIPPED (chromium)` without a browser.)

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use wvpc_tests::browser::Browser;

mod support;

use support::{Dir, Running, curl, wvpc};

/// An origin that answers one request and then stops listening; the receiver hears when
/// it has (connections to its port are refused from then on).
fn origin_for_one_request() -> (u16, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (closed, closed_rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let body = r#"{"id":1,"name":"Ada"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        drop(listener);
        let _ = closed.send(());
    });
    (port, closed_rx)
}

/// The word after `marker` in `line`.
fn after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split([' ', ')']).next())
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
        .to_owned()
}

fn created(state: &Path, args: &[&str]) -> serde_json::Value {
    let output = wvpc(state).args(args).output().unwrap();
    assert!(output.status.success(), "wvpc {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
}

/// The text a user sees in the first element matching `selector`.
fn text(browser: &mut Browser, selector: &str) -> String {
    let text = browser
        .eval(&format!("document.querySelector('{selector}').innerText"))
        .unwrap();
    text.as_str().unwrap_or_default().to_owned()
}

#[test]
fn the_status_page_shows_the_connector_the_requests_and_the_error_in_a_browser() {
    let Some(mut browser) = Browser::launch() else {
        return;
    };
    let state = Dir::new("dev-status-state");
    let project = Dir::new("dev-status-project");
    let (port, origin_closed) = origin_for_one_request();

    let tunnel = created(state.path(), &["tunnel", "create", "office", "--json"]);
    let tunnel_id = tunnel["id"].as_str().unwrap();
    created(
        state.path(),
        &[
            "service",
            "create",
            "api",
            "--type",
            "http",
            "--tunnel-id",
            tunnel_id,
            "--ipv4",
            "127.0.0.1",
            "--http-port",
            &port.to_string(),
        ],
    );
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
        .args(["--api-listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .current_dir(project.path());
    let dev = Running::spawn(dev);
    let addr = after(&dev.line("ready:"), "http://");
    let edge = dev.line("tunnel edge on");
    let ops = after(&dev.line("metrics on http://"), "http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let mut connector = wvpc(state.path());
    connector
        .args(["tunnel", "run", "--ha-connections", "1", "--token"])
        .arg(tunnel["token"].as_str().unwrap())
        .args(["--edge", &after(&edge, "tunnel edge on ")])
        .args(["--cacert", &after(&edge, "--cacert ")]);
    let connector = Running::spawn(connector);
    let connector_id = after(&connector.line("registered:"), "(connector ");

    let (status, _, body) = curl(&addr, "/users/1");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    origin_closed
        .recv_timeout(Duration::from_secs(60))
        .expect("the origin stops listening");
    let (status, _, body) = curl(&addr, "/users/1");
    assert_eq!(status, "HTTP/1.1 502 Bad Gateway", "{body}");
    assert!(body.contains("ProxyError: connection_refused"), "{body}");

    browser.open(&format!("http://{ops}/status")).unwrap();
    browser
        .wait_for(
            "document.body.dataset.loaded === 'true'",
            Duration::from_secs(30),
        )
        .unwrap();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    browser.screenshot(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    println!("status page screenshot: {}", shot.display());

    let tunnels = text(&mut browser, "#tunnels");
    assert!(tunnels.contains(tunnel_id), "{tunnels}");
    assert!(tunnels.contains(&connector_id), "{tunnels}");
    assert!(tunnels.contains("active"), "{tunnels}");

    // The service's rows: requests (the binding-worker's count) and connections (iris's;
    // the origin closed after one request, so each request opened its own): its name, two
    // in both windows, one refused.
    for section in ["#requests", "#services"] {
        let row = browser
            .eval(&format!(
                "[...document.querySelectorAll('{section} tbody tr')].map(tr => tr.innerText)"
            ))
            .unwrap();
        let rows: Vec<&str> = row
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(rows.len(), 1, "{section}: {rows:?}");
        let api = rows[0];
        assert!(api.contains("api"), "{section}: {api}");
        assert!(api.contains("2 / 2"), "{section}: {api}");
        assert!(api.contains("connection_refused ×1"), "{section}: {api}");
        assert!(api.contains("50.0%"), "{section}: {api}");
    }
    // The script served both requests; the refused fetch was answered by the script (a 502
    // it returned), not a failure of the script itself.
    let scripts = text(&mut browser, "#scripts");
    assert!(scripts.contains("proxy"), "{scripts}");
    assert!(scripts.contains("2 / 2"), "{scripts}");

    // The charts draw the two requests once (not once per point before the start).
    let charts = browser
        .eval("[...document.querySelectorAll('#services svg.chart')].map(s => s.getAttribute('aria-label'))")
        .unwrap();
    assert_eq!(
        charts,
        serde_json::json!([
            "last 5 minutes: 2 requests, 1 failed",
            "last 60 minutes: 2 requests, 1 failed"
        ])
    );
    let header = text(&mut browser, "header");
    assert!(header.contains("workers-vpc dev"), "{header}");
    // Nothing is cut off at a laptop's width: no table scrolls, nor the page.
    let cut = browser
        .eval(
            "[document.documentElement, ...document.querySelectorAll('.scroll')]\
               .filter(e => e.scrollWidth > e.clientWidth).map(e => e.className || e.tagName)",
        )
        .unwrap();
    assert_eq!(cut, serde_json::json!([]), "wider than the window");

    assert!(
        browser.problems().is_empty(),
        "the page reported errors: {:?}",
        browser.problems()
    );

    // The process stops: the next refresh says so, and the last figures stay.
    drop(dev);
    let problem = browser
        .wait_for(
            "(p => getComputedStyle(p).display !== 'none' && p.innerText)\
               (document.getElementById('problem'))",
            Duration::from_secs(30),
        )
        .unwrap();
    let problem = problem.as_str().unwrap_or_default();
    assert!(
        problem.starts_with(&format!(
            "Cannot reach {ops}: the process may have stopped."
        )),
        "{problem}"
    );
    assert!(problem.contains("The figures below are from"), "{problem}");
    assert!(text(&mut browser, "#services").contains("connection_refused"));
    let stopped = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page-stopped.png");
    browser.screenshot(&stopped).unwrap();
    println!(
        "status page after the process stopped: {}",
        stopped.display()
    );
}

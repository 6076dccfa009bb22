//! JavaScript scripts on the real path: `examples/proxy-js` serves what the Rust proxy
//! serves (the origin's answer, 6 MiB streamed both ways, redirects, the same error codes),
//! and a Workers-style script's `env`, exceptions, plain `fetch` and CPU limit behave as a
//! Workers developer expects. The scripts are built by the runtime when loaded (Node.js
//! needed; the tests say `SKIPPED (node)` without it).

use std::path::PathBuf;

use bytes::Bytes;
use wvpc_runtime::Limits;
use wvpc_tests::origin::{is_pattern, pattern};
use wvpc_tests::real::{ORIGIN_NAME, RealWorld, WorldOptions};
use wvpc_tests::{client, guests, trace_init, within};

async fn world(script: &'static str) -> RealWorld {
    world_with(script, Limits::default()).await
}

async fn world_with(script: &'static str, limits: Limits) -> RealWorld {
    trace_init();
    within(
        "starting the real path (a JavaScript script builds and compiles first)",
        RealWorld::start_with(WorldOptions {
            script,
            limits,
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_proxy_serves_what_the_rust_proxy_serves() {
    if !guests::javascript_builds() {
        return;
    }
    let mut w = world(guests::PROXY_JS).await;
    let addr = w.stack.script_addr;

    let reply = within("GET /hello", client::get(addr, "/hello?x=1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /hello?x=1");
    let seen = w.origin.seen();
    assert_eq!(seen[0].host.as_deref(), Some(ORIGIN_NAME));
    assert_eq!(seen[0].method, "GET");

    // 6 MiB stream back intact, and 6 MiB stream to the origin and back.
    const BIG: usize = 6 * 1024 * 1024 + 13;
    let reply = within("GET /big", client::get(addr, &format!("/big/{BIG}"))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), BIG);
    assert!(is_pattern(&reply.body), "the body arrived corrupted");
    let upload: Vec<u8> = (0..BIG).map(pattern).collect();
    let reply = within(
        "POST /echo",
        client::send(addr, "POST", "/echo", Bytes::from(upload.clone())),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == upload, "the echoed body differs");
    assert_eq!(w.origin.seen().last().unwrap().body_len, upload.len());

    // Redirects are followed through the same binding (the default of Workers) …
    let reply = within("GET /moved/", client::get(addr, "/moved/there?y=2")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "hello from origin: /there?y=2");
    // … and a 307 re-sends the body.
    let reply = within(
        "POST /moved/echo",
        client::send(addr, "POST", "/moved/echo", Bytes::from_static(b"again")),
    )
    .await;
    assert_eq!(reply.text(), "again");
    // `redirect: "manual"` hands the 3xx to the script.
    let reply = within(
        "GET /moved/ manual",
        client::request(
            addr,
            "GET",
            "/moved/x",
            &[("x-redirect", "manual")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(reply.status, 307, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("/x"));

    // The origin goes away: the same code as the Rust script sees.
    w.origin.stop().await;
    let reply = within("GET after the origin stopped", client::get(addr, "/hello")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "ProxyError: connection_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connector_the_javascript_proxy_sees_destination_unavailable() {
    if !guests::javascript_builds() {
        return;
    }
    let mut w = world(guests::PROXY_JS).await;
    let tunnel_ids = w.stack.registry().tunnels();
    w.stop_connector();
    within(
        "connector gone",
        w.stack.registry().wait_for_no_connection(tunnel_ids[0]),
    )
    .await;
    let reply = within("GET", client::get(w.stack.script_addr, "/hello")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "ProxyError: destination_unavailable");
}

/// A Workers-style script written by the test: `/env` lists the bindings, `/plain` uses the
/// global `fetch` without a binding, `/throw` throws, `/spin` never returns, `/later` answers
/// and finishes work in `ctx.waitUntil`, anything else goes through `env.API`.
const WORKER: &str = r#"
let waited = 0;
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case '/env':
        return new Response(Object.keys(env).join(','));
      case '/plain':
        try {
          await fetch('http://api.internal/plain');
          return new Response('fetched');
        } catch (error) {
          return new Response(error.message, { status: 502 });
        }
      case '/throw':
        throw new RangeError('thrown on purpose');
      case '/spin':
        for (;;) {}
      case '/later':
        ctx.waitUntil(new Promise((resolve) => setTimeout(resolve, 1)).then(() => { waited += 1; }));
        return new Response('later');
      case '/waited':
        return new Response(String(waited));
      default: {
        const response = await env.API.fetch(`http://api.internal${url.pathname}`);
        return new Response(`through API: ${await response.text()}`);
      }
    }
  },
};
"#;

fn worker_entry() -> &'static str {
    static ENTRY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let path = ENTRY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wvpc-js-worker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.js");
        std::fs::write(&path, WORKER).unwrap();
        path
    });
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_style_script_gets_its_bindings_and_its_failures_stay_its_own() {
    if !guests::javascript_builds() {
        return;
    }
    let limits = Limits {
        cpu: std::time::Duration::from_millis(200),
        ..Limits::default()
    };
    let w = world_with(worker_entry(), limits).await;
    let addr = w.stack.script_addr;

    let reply = within("GET /env", client::get(addr, "/env")).await;
    assert_eq!(
        reply.text(),
        "API",
        "env holds exactly the declared bindings"
    );
    let reply = within("GET /hi", client::get(addr, "/hi")).await;
    assert_eq!(reply.text(), "through API: hello from origin: /hi");

    // A fetch that no binding owns is refused, with the code.
    let reply = within("GET /plain", client::get(addr, "/plain")).await;
    assert_eq!(reply.text(), "ProxyError: http_request_denied");
    assert!(w.origin.seen().iter().all(|s| s.path != "/plain"));

    // An exception: 500 for that request only, the stack in the script's log.
    let reply = within("GET /throw", client::get(addr, "/throw")).await;
    assert_eq!(reply.status, 500);
    assert!(
        !reply.text().contains("thrown on purpose"),
        "no stack to the client"
    );
    let reply = within("GET /hi after the exception", client::get(addr, "/hi")).await;
    assert_eq!(reply.status, 200);

    // waitUntil work finishes after the response.
    let reply = within("GET /later", client::get(addr, "/later")).await;
    assert_eq!(reply.text(), "later");

    // An endless loop: the CPU limit ends it, and the script serves the next request.
    let reply = within("GET /spin", client::get(addr, "/spin")).await;
    assert!(reply.status >= 500, "{} {}", reply.status, reply.text());
    let reply = within("GET /hi after the loop", client::get(addr, "/hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

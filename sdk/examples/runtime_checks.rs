//! Guest for wvpc-runtime's integration tests: each path exercises one host behaviour.
//!
//! - `/trap`: panics, so the instance traps (the host must fail this request only).
//! - `/outbound?port=N`: a plain `wasi:http/outgoing-handler` request to `127.0.0.1:N`, which
//!   the host must deny; answers `outbound: <outcome>`.
//! - `/undeclared`: fetch through a binding the config does not declare; answers the error.
//! - `/buffered/<rest>`: fetch `http://api.internal/<rest>` through `API` and read the whole
//!   body in the script; answers it, or 502 `ProxyError: <code>` when the fetch or the body
//!   read fails.
//! - `/fetch/<METHOD>/<follow|manual>/<url>`: fetch `<url>` as given (relative, other
//!   schemes, ports…) with the incoming body; answers `status=…`, `location=…` and the body.
//! - `/loop`: spins forever (the CPU limit must stop it).
//! - `/alloc`: allocates until memory runs out (the memory limit must stop it).
//! - `/sleep`: waits on a 60 s timer without using CPU (the wall-clock limit must stop it).
//! - `/print`: writes lines to stdout and stderr, and a last one without a newline.
//! - `/many/<n>`: `n` fetches in flight at once, then reads them in order.
//! - `/subrequests/<n>`: `n` fetches one after the other; stops at the first failure.
//! - `/queue`: three fetches at once while the first response is held unread.
//! - `/long-url/<n>`, `/big-header/<n>`: a fetch with an `n`-byte path / header value.
//! - `/counter`: answers `count=<n>`, `n` the requests this instance has served at that
//!   path (a global: it grows when the runtime reuses the instance).
//! - `/counter/grow/<mb>`: the same, after keeping `mb` MiB more for the life of the
//!   instance.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wvpc_sdk::wasip2::http::outgoing_handler;
use wvpc_sdk::wasip2::http::types::{Fields, OutgoingRequest, Scheme};
use wvpc_sdk::{Env, FetchOptions, Handler, ProxyError, Redirect, Request, Response};

struct Checks;

/// Requests to `/counter` this instance served.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// What `/counter/grow` keeps.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

impl Handler for Checks {
    fn fetch(request: Request, env: &Env) -> Response {
        let path = request.path_with_query().to_owned();
        if path == "/trap" {
            panic!("runtime-checks: trapping on purpose");
        }
        if let Some(rest) = path.strip_prefix("/counter") {
            if let Some(mb) = rest.strip_prefix("/grow/") {
                let mb: usize = mb.parse().unwrap_or(0);
                let kept = std::hint::black_box(vec![1u8; mb << 20]);
                KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(kept);
            }
            let count = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
            return Response::new(200).with_body(format!("count={count}"));
        }
        if let Some(port) = path.strip_prefix("/outbound?port=") {
            return Response::new(200).with_body(format!("outbound: {}", plain_outbound(port)));
        }
        if path == "/undeclared" {
            return match env
                .binding("UNDECLARED")
                .fetch(Request::get("http://api.internal/"))
            {
                Ok(response) => {
                    Response::new(200).with_body(format!("status {}", response.status()))
                }
                Err(err) => Response::new(502).with_body(err.to_string()),
            };
        }
        if let Some(rest) = path.strip_prefix("/buffered/") {
            let upstream = request.with_url(format!("http://api.internal/{rest}"));
            let result = env
                .binding("API")
                .fetch(upstream)
                .and_then(|response| Ok((response.status(), response.into_body().into_bytes()?)));
            return match result {
                Ok((status, body)) => Response::new(status).with_body(body),
                Err(err) => Response::new(502).with_body(err.to_string()),
            };
        }
        if let Some(rest) = path.strip_prefix("/fetch/") {
            return fetch_as_given(rest, request, env);
        }
        if path == "/loop" {
            let mut spins: u64 = 0;
            loop {
                spins = std::hint::black_box(spins.wrapping_add(1));
            }
        }
        if path == "/alloc" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![1; 1 << 20]));
            }
        }
        if path == "/sleep" {
            wvpc_sdk::wasip2::clocks::monotonic_clock::subscribe_duration(60_000_000_000).block();
            return Response::new(200).with_body("woke up");
        }
        if path == "/print" {
            println!("hello from stdout");
            eprintln!("oops on stderr");
            print!("no newline at the end");
            // std buffers stdout by line: push the partial line to the host.
            let _ = std::io::Write::flush(&mut std::io::stdout());
            return Response::new(200).with_body("printed");
        }
        if let Some(n) = path.strip_prefix("/many/") {
            return many_at_once(n.parse().unwrap_or(0), env);
        }
        if let Some(n) = path.strip_prefix("/subrequests/") {
            return one_after_another(n.parse().unwrap_or(0), env);
        }
        if path == "/queue" {
            return queue(env);
        }
        if let Some(n) = path.strip_prefix("/long-url/") {
            let url = format!("http://api.internal/{}", "a".repeat(n.parse().unwrap_or(0)));
            return outcome(env.binding("API").fetch(Request::get(url)));
        }
        if let Some(n) = path.strip_prefix("/big-header/") {
            let value = "v".repeat(n.parse().unwrap_or(0));
            let request = Request::get("http://api.internal/h").with_header("x-big", value);
            return outcome(env.binding("API").fetch(request));
        }
        Response::new(404).with_body("unknown check")
    }
}

/// The status and body of a fetch, or 502 with its error.
fn outcome(result: Result<Response, ProxyError>) -> Response {
    let result = result.and_then(|response| {
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| String::from_utf8_lossy(l).into_owned());
        let body = response.into_body().into_bytes()?;
        Ok((status, location, body))
    });
    match result {
        Ok((status, location, body)) => {
            let mut text = format!("status={status}\n");
            if let Some(location) = location {
                text.push_str(&format!("location={location}\n"));
            }
            text.push_str(&String::from_utf8_lossy(&body));
            Response::new(200).with_body(text)
        }
        Err(err) => Response::new(502).with_body(err.to_string()),
    }
}

/// `<METHOD>/<follow|manual>/<url>`.
fn fetch_as_given(rest: &str, mut request: Request, env: &Env) -> Response {
    let mut parts = rest.splitn(3, '/');
    let (Some(method), Some(mode), Some(url)) = (parts.next(), parts.next(), parts.next()) else {
        return Response::new(400).with_body("use /fetch/<METHOD>/<follow|manual>/<url>");
    };
    let redirect = if mode == "manual" {
        Redirect::Manual
    } else {
        Redirect::Follow
    };
    let upstream = Request::new(method, url).with_body(request.take_body());
    outcome(
        env.binding("API")
            .fetch_with(upstream, FetchOptions::default().redirect(redirect)),
    )
}

fn many_at_once(n: usize, env: &Env) -> Response {
    let api = env.binding("API");
    let mut pending = Vec::new();
    for i in 0..n {
        match api.start(
            Request::get(format!("http://api.internal/item/{i}")),
            FetchOptions::default(),
        ) {
            Ok(p) => pending.push(p),
            Err(err) => return Response::new(502).with_body(format!("start {i}: {err}")),
        }
    }
    let mut ok = 0;
    for (i, p) in pending.into_iter().enumerate() {
        let body = p.wait().and_then(|r| r.into_body().into_bytes());
        match body {
            Ok(body) if String::from_utf8_lossy(&body).contains(&format!("path=/item/{i}\n")) => {
                ok += 1
            }
            Ok(_) => return Response::new(500).with_body(format!("fetch {i}: wrong body")),
            Err(err) => return Response::new(502).with_body(format!("fetch {i}: {err}")),
        }
    }
    Response::new(200).with_body(format!("ok={ok}"))
}

fn one_after_another(n: usize, env: &Env) -> Response {
    let api = env.binding("API");
    for i in 0..n {
        if let Err(err) = api.fetch(Request::get(format!("http://api.internal/seq/{i}"))) {
            return Response::new(200).with_body(format!("ok={i} then {err}"));
        }
    }
    Response::new(200).with_body(format!("ok={n}"))
}

/// With `limits.connections = 1` and `limits.queued_connections = 1`: A holds the only
/// connection (its body unread), B waits for it, C finds the queue full.
fn queue(env: &Env) -> Response {
    let api = env.binding("API");
    let start = |name: &str| {
        api.start(
            Request::get(format!("http://api.internal/{name}")),
            FetchOptions::default(),
        )
    };
    let (a, b, c) = (start("a"), start("b"), start("c"));
    let show = |r: Result<Response, ProxyError>| match r {
        Ok(response) => response.status().to_string(),
        Err(err) => err.to_string(),
    };
    let c = show(c.and_then(|c| c.wait()));
    let a = a.and_then(|a| a.wait());
    let b_ready_while_a_open = b.as_ref().map(|b| b.is_ready()).unwrap_or(true);
    let a = show(a); // drops A's response: its connection is free
    let b = show(b.and_then(|b| b.wait()));
    Response::new(200).with_body(format!(
        "A={a} B={b} C={c} B-ready-while-A-open={b_ready_while_a_open}"
    ))
}

/// What happens to an outgoing request that bypasses the bindings.
fn plain_outbound(port: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    let authority = format!("127.0.0.1:{port}");
    if request.set_scheme(Some(&Scheme::Http)).is_err()
        || request.set_authority(Some(&authority)).is_err()
        || request.set_path_with_query(Some("/")).is_err()
    {
        return "could not build the request".into();
    }
    let pending = match outgoing_handler::handle(request, None) {
        Ok(pending) => pending,
        Err(code) => return ProxyError::from(code).to_string(),
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(code))) => ProxyError::from(code).to_string(),
        Some(Err(())) | None => "no outcome".into(),
    }
}

wvpc_sdk::export_handler!(Checks);

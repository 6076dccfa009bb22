//! The stack of `wvpc dev --mock` (`wvpc_platform::mock_stack`): the real runtime,
//! binding-worker and iris router over real sockets, with `MockNetwork` behind iris instead of
//! the directory and the tunnels.
//!
//! The comparison test runs each fault of the mock and the same code's real cause on the real
//! path (the error-code table's causes, [`super::error_codes`]) and requires the script to see
//! the same thing: status, body and the wasi:http error code.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;
use wvpc_errors::ErrorCode;
use wvpc_iris::dev_mock::{
    BindingMock, CannedResponse, Exchange, ExchangeOutcome, Fault, FaultCode, MockNetwork, MockSpec,
};
use wvpc_platform::mock_stack::{MockStack, MockStackConfig};
use wvpc_runtime::{ScriptConfig, VpcServiceBinding};
use wvpc_tests::origin::Origin;
use wvpc_tests::real::WorldOptions;
use wvpc_tests::{client, guests, trace_init, within};

use super::error_codes::{Cause, cause, start};

/// The connector's dial timeout in the real world, and the mock's.
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

fn script(main: &str) -> ScriptConfig {
    ScriptConfig {
        name: "mocked".into(),
        main: PathBuf::from(main),
        vpc_services: vec![VpcServiceBinding {
            binding: "API".into(),
            service_id: Uuid::nil(),
        }],
        vpc_networks: Vec::new(),
        limits: Default::default(),
    }
}

async fn mock_stack(main: &str, spec: MockSpec) -> MockStack {
    let mock = MockNetwork::with_dial_timeout(["API".to_owned()], spec, DIAL_TIMEOUT)
        .expect("a mock network");
    within(
        "starting the mock stack",
        MockStack::start(MockStackConfig {
            script: script(main),
            mock,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            server: Default::default(),
        }),
    )
    .await
    .expect("starting the mock stack")
}

fn api(mock: BindingMock) -> MockSpec {
    MockSpec {
        bindings: [("API".to_owned(), mock)].into(),
    }
}

/// What the script answered: status, body and the wasi:http error code it saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    body: String,
    wasi: String,
}

async fn seen(addr: SocketAddr, path: &str) -> Seen {
    let reply = within(path, client::get(addr, path)).await;
    Seen {
        status: reply.status,
        wasi: reply
            .headers
            .get("wvpc-wasi-error-code")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: reply.text(),
    }
}

/// Each fault code next to the real cause that produces it, and the script path (its scheme
/// and host) the real row requests.
const PAIRS: &[(FaultCode, Cause, &str)] = &[
    (
        FaultCode::ConnectionRefused,
        Cause::ClosedPort,
        "/http/api.internal/x",
    ),
    (
        FaultCode::ConnectionTimeout,
        Cause::FullBacklog,
        "/http/api.internal/x",
    ),
    (
        FaultCode::DnsError,
        Cause::NxDomain,
        "/http/missing.internal/x",
    ),
    (
        FaultCode::TlsCertificateError,
        Cause::UntrustedCertificate,
        "/https/secure.internal/x",
    ),
    (
        FaultCode::HttpResponseIncomplete,
        Cause::ShortBody,
        "/http/api.internal/x",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_of_the_mock_reaches_the_script_as_its_real_cause_does() {
    trace_init();
    assert_eq!(
        PAIRS.len(),
        FaultCode::ALL.len(),
        "every fault code has a pair"
    );
    let mut world = start(WorldOptions {
        script: guests::BINDING_CHECKS,
        dial_timeout: Some(DIAL_TIMEOUT),
        ..WorldOptions::default()
    })
    .await;
    let mock = mock_stack(guests::BINDING_CHECKS, MockSpec::default()).await;

    for &(code, real_cause, path) in PAIRS {
        let (real_path, _keep) = cause(&mut world, real_cause).await;
        assert_eq!(real_path, path, "{code}: the real row's path");
        within(
            "iris routes the row's service",
            world.stack.routes_current(),
        )
        .await
        .expect("reading the directory");
        let real = seen(world.stack.script_addr, path).await;
        assert_eq!(real.status, 502, "{code}: real path: {real:?}");
        assert_eq!(
            real.body,
            format!("ProxyError: {code}"),
            "{code}: real path"
        );

        // The fault for every request of the binding, then scoped to the request's path
        // (decided once the request is read; the retry meets it at its stage).
        for fault in [
            Fault::new(code),
            Fault::new(code).on_path("/x").on_method("GET"),
        ] {
            let scoped = fault.path.is_some();
            mock.mock.set_faults("API", vec![fault]).unwrap();
            let mocked = seen(mock.script_addr, path).await;
            eprintln!("{code:<26} scoped={scoped:<5} real={real:?} mock={mocked:?}");
            assert_eq!(mocked, real, "{code} (scoped: {scoped}): mock vs real path");
        }
    }

    // Without faults the mock answers (its 501 for a request nothing answers), over TLS too:
    // the synthetic service trusts the mock's certificate.
    mock.mock.set_faults("API", Vec::new()).unwrap();
    for path in ["/http/api.internal/x", "/https/secure.internal/x"] {
        let ok = seen(mock.script_addr, path).await;
        assert_eq!(ok.status, 501, "{path}: {ok:?}");
        assert!(ok.body.contains("API: GET /x"), "{path}: {ok:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canned_answers_the_upstream_and_501_for_the_rest() {
    trace_init();
    let origin = Origin::start("127.0.0.1")
        .await
        .expect("an upstream origin");
    let spec = api(BindingMock {
        upstream: Some(origin.addr),
        responses: vec![CannedResponse {
            method: Some("GET".into()),
            path: "/users/*".into(),
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(br#"{"id":1}"#),
        }],
        ..BindingMock::default()
    });
    let stack = mock_stack(guests::PROXY, spec).await;

    let canned = within("canned", client::get(stack.script_addr, "/users/1")).await;
    assert_eq!(canned.status, 200);
    assert_eq!(canned.text(), r#"{"id":1}"#);
    assert_eq!(
        canned.headers.get("content-type").unwrap(),
        "application/json"
    );
    assert!(
        origin.seen().is_empty(),
        "a canned answer reaches no upstream"
    );

    let proxied = within(
        "upstream",
        client::send(
            stack.script_addr,
            "POST",
            "/orders?x=1",
            Bytes::from("order"),
        ),
    )
    .await;
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    let at_origin = origin.seen();
    assert_eq!(at_origin.len(), 1);
    assert_eq!(at_origin[0].method, "POST");
    assert_eq!(at_origin[0].path, "/orders?x=1");
    assert_eq!(at_origin[0].body_len, 5);

    let requests = stack.mock.requests("API");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].url, "http://api.internal/users/1");
    assert_eq!(requests[0].header("host"), Some("api.internal"));
    assert_eq!(requests[1].method, "POST");
    assert_eq!(requests[1].body, Bytes::from("order"));

    // Without an upstream, what no canned response answers is a 501 that says what to add.
    stack
        .mock
        .update("API", |mock| mock.upstream = None)
        .unwrap();
    let unmatched = within("unmatched", client::get(stack.script_addr, "/orders/7")).await;
    assert_eq!(unmatched.status, 501);
    let text = unmatched.text();
    assert!(
        text.contains("API") && text.contains("GET") && text.contains("/orders/7"),
        "{text}"
    );

    // An upstream that is down: the dial is refused, as on the real path.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    stack
        .mock
        .update("API", |mock| mock.upstream = Some(closed))
        .unwrap();
    let down = within("upstream down", client::get(stack.script_addr, "/orders/7")).await;
    assert_eq!(down.status, 502);
    assert_eq!(down.text(), "ProxyError: connection_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_faults_rates_and_dns_apply_per_request() {
    trace_init();
    let spec = api(BindingMock {
        host: Some("api.internal".into()),
        dns: [(
            "api.internal".to_owned(),
            vec!["127.0.0.1".parse().unwrap()],
        )]
        .into(),
        responses: vec![CannedResponse {
            method: None,
            path: "*".into(),
            status: 200,
            headers: Vec::new(),
            body: Bytes::from_static(b"ok"),
        }],
        faults: vec![
            // Never hits: a rate of 0.
            Fault {
                rate: 0,
                ..Fault::new(FaultCode::ConnectionRefused)
            },
            Fault::new(FaultCode::ConnectionRefused).on_path("/flaky/*"),
        ],
        ..BindingMock::default()
    });
    let stack = mock_stack(guests::PROXY, spec).await;
    let log = Arc::new(Mutex::new(Vec::<Exchange>::new()));
    stack.mock.set_observer({
        let log = log.clone();
        Arc::new(move |exchange: &Exchange| log.lock().unwrap().push(exchange.clone()))
    });
    let ok = within("ok", client::get(stack.script_addr, "/fine")).await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok"));
    let flaky = within("flaky", client::get(stack.script_addr, "/flaky/1")).await;
    assert_eq!(flaky.status, 502);
    assert_eq!(flaky.text(), "ProxyError: connection_refused");
    // A request with a body is not sent again, so a scoped dial fault ends its connection.
    let posted = within(
        "flaky POST",
        client::send(stack.script_addr, "POST", "/flaky/2", Bytes::from("x")),
    )
    .await;
    assert_eq!(posted.text(), "ProxyError: connection_terminated");
    let outcomes: Vec<(Option<(String, String)>, ExchangeOutcome)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|e| (e.request.clone(), e.outcome))
        .collect();
    let request =
        |method: &str, path: &str| Some((method.to_owned(), format!("http://api.internal{path}")));
    assert_eq!(
        outcomes,
        vec![
            (request("GET", "/fine"), ExchangeOutcome::Status(200)),
            (
                request("GET", "/flaky/1"),
                ExchangeOutcome::Failed(ErrorCode::ConnectionRefused)
            ),
            (
                request("POST", "/flaky/2"),
                ExchangeOutcome::Failed(ErrorCode::ConnectionTerminated)
            ),
        ],
        "one log entry per binding request"
    );

    // The service's name no longer resolves: dns_error, as an NXDOMAIN on the real path.
    stack.mock.update("API", |mock| mock.dns.clear()).unwrap();
    stack
        .mock
        .update("API", |mock| mock.host = Some("gone.internal".into()))
        .unwrap();
    // The mock answers its own service name when `dns` does not list it; an explicit fault
    // is the way to break the lookup.
    let still = within("host answered", client::get(stack.script_addr, "/fine")).await;
    assert_eq!(still.status, 200);
    stack
        .mock
        .set_faults("API", vec![Fault::new(FaultCode::DnsError)])
        .unwrap();
    let broken = within("dns fault", client::get(stack.script_addr, "/fine")).await;
    assert_eq!(broken.text(), "ProxyError: dns_error");
}

//! `--otlp-endpoint`: the four processes and the connector export their spans to an OTLP
//! receiver, and one script request is one trace whose parent chain crosses every hop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use wvpc_tests::client::{Reply, get_host_with};
use wvpc_tests::{guests, within};

use super::{
    Platform, PrivateNetwork, connector_process, tunnel_and_service, unresolvable_service,
};

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    /// The exporting process's `service.name`.
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    /// String and integer attributes, as text.
    attributes: HashMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP/HTTP protobuf receiver on `127.0.0.1:0`: `POST /v1/traces` bodies are decoded and
/// their spans kept.
struct OtlpReceiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl OtlpReceiver {
    async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (kept, notify) = (spans.clone(), arrived.clone());
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (kept, notify) = (kept.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (kept, notify) = (kept.clone(), notify.clone());
                        async move { Ok::<_, hyper::Error>(receive(req, &kept, &notify).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        OtlpReceiver {
            addr,
            spans,
            arrived,
            server,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans of `trace_id` once `done` says they are all there (bounded wait).
    async fn trace_until(
        &self,
        trace_id: &[u8],
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        within("the trace's spans arrive at the OTLP receiver", async {
            loop {
                // Registered before looking, so that a batch arriving in between wakes us.
                let arrived = self.arrived.notified();
                let trace: Vec<Received> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.trace_id == trace_id)
                    .cloned()
                    .collect();
                if done(&trace) {
                    return trace;
                }
                arrived.await;
            }
        })
        .await
    }
}

/// Answers one request to the receiver: a decoded `/v1/traces` export is kept (200), anything
/// else is 400/404.
async fn receive(
    req: hyper::Request<Incoming>,
    kept: &Mutex<Vec<Received>>,
    arrived: &Notify,
) -> hyper::Response<Full<Bytes>> {
    let answer = |status: u16| {
        let mut response = hyper::Response::new(Full::new(Bytes::new()));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        response
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return answer(404);
    }
    let Ok(body) = req.into_body().collect().await else {
        return answer(400);
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return answer(400);
    };
    let mut received = Vec::new();
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                    })
                    .collect();
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes,
                });
            }
        }
    }
    kept.lock().unwrap().extend(received);
    arrived.notify_waiters();
    answer(200)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Bytes of a hex id.
fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `GET host path` with a fresh `traceparent` each time, until the script is served (not a
/// `404` naming the host); the answer, and the trace and parent span ids it was sent with.
async fn traced_until_served(
    platform: &Platform,
    host: &str,
    path: &str,
) -> (Reply, Vec<u8>, Vec<u8>) {
    within(&format!("{host}{path} served"), async {
        loop {
            let trace_id = uuid::Uuid::new_v4().simple().to_string();
            let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
            let traceparent = format!("00-{trace_id}-{span_id}-01");
            let reply = get_host_with(
                platform.runtime.addr(0),
                host,
                path,
                &[("traceparent", &traceparent)],
            )
            .await;
            if !(reply.status == 404 && reply.text().contains(host)) {
                return (reply, unhex(&trace_id), unhex(&span_id));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The span `span`'s ancestors in `trace`, nearest first, as `service/name`.
fn ancestry(trace: &[Received], span: &Received) -> Vec<String> {
    let mut chain = vec![format!("{}/{}", span.service, span.name)];
    let mut parent = span.parent_span_id.clone();
    while let Some(next) = trace.iter().find(|s| s.span_id == parent) {
        chain.push(format!("{}/{}", next.service, next.name));
        parent = next.parent_span_id.clone();
    }
    chain
}

/// A request's spans from the connector's stream to the origin up to the runtime's request.
const CHAIN: [&str; 7] = [
    "wvpc-connector/edge_stream",
    "wvpc-iris/tunnel_open",
    "wvpc-iris/connect",
    "wvpc-binding-worker/iris_connect",
    "wvpc-binding-worker/binding_call",
    "wvpc-runtime/binding_fetch",
    "wvpc-runtime/script_request",
];

fn named<'a>(trace: &'a [Received], service: &str, name: &str) -> Option<&'a Received> {
    trace
        .iter()
        .find(|s| s.service == service && s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_across_the_processes_and_a_failure_carries_its_code() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let net = PrivateNetwork::start(&[("a.internal", "127.0.0.2")]).await;
    let platform =
        Platform::start_with_args(1, "127.0.0.1:0", &["--otlp-endpoint", &endpoint]).await;
    let local = platform.directory();
    let (office, service_a) = tunnel_and_service(&local, "office", "a", "a.internal", &net);
    // A service whose hostname the private DNS server does not know.
    let missing = unresolvable_service(&local, office.tunnel_id, &net);
    let _connector = connector_process(&platform, &office, &["--otlp-endpoint", &endpoint]).await;
    platform
        .deploy(&platform.token, "proxy", guests::PROXY, service_a, "")
        .await
        .expect("deploying the proxy");
    platform
        .deploy(&platform.token, "broken", guests::PROXY, missing, "")
        .await
        .expect("deploying the proxy of the missing host");

    // The first request through the binding: a fresh CONNECT, so every hop takes part.
    let (reply, trace_id, client_span) =
        traced_until_served(&platform, "proxy.local.workers.localhost", "/a").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let request_id = reply
        .header("wvpc-request-id")
        .expect("a request id")
        .to_owned();
    let origin = net.origin("a.internal").addr.to_string();
    let to_origin = |s: &Received| s.name == "edge_stream" && s.attr("dest") == Some(&origin);
    // Each process sends its spans when they end, in its own batches.
    let trace = receiver
        .trace_until(&trace_id, |trace| {
            trace.iter().any(to_origin)
                && CHAIN[1..].iter().all(|hop| {
                    let (service, name) = hop.split_once('/').unwrap();
                    named(trace, service, name).is_some()
                })
        })
        .await;
    let services: std::collections::BTreeSet<&str> =
        trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "wvpc-binding-worker",
            "wvpc-connector",
            "wvpc-iris",
            "wvpc-runtime"
        ],
        "{trace:#?}"
    );
    // The parent chain from the connector's stream up to the client's own span.
    let stream = trace.iter().find(|s| to_origin(s)).unwrap();
    assert_eq!(ancestry(&trace, stream), CHAIN, "{trace:#?}");
    let root = named(&trace, "wvpc-runtime", "script_request").unwrap();
    assert_eq!(
        root.parent_span_id, client_span,
        "the client's traceparent is continued"
    );
    assert_eq!(root.attr("status"), Some("200"));
    assert_eq!(root.attr("script"), Some("proxy"));
    for (service, name) in [
        ("wvpc-runtime", "script_request"),
        ("wvpc-runtime", "binding_fetch"),
        ("wvpc-binding-worker", "binding_call"),
        ("wvpc-iris", "connect"),
    ] {
        let span = named(&trace, service, name).unwrap();
        assert_eq!(
            span.attr("request_id"),
            Some(request_id.as_str()),
            "{span:#?}"
        );
    }
    assert_eq!(stream.attr("flow"), Some(request_id.as_str()));
    let connect = named(&trace, "wvpc-iris", "connect").unwrap();
    assert_eq!(
        connect.attr("service_id"),
        Some(service_a.to_string().as_str())
    );
    assert_eq!(connect.attr("code"), None, "{connect:#?}");
    let dns = named(&trace, "wvpc-iris", "dns").expect("the hostname was resolved");
    assert_eq!(dns.attr("cache"), Some("miss"));

    // A request whose host does not resolve: its spans carry the code.
    let (reply, trace_id, _) =
        traced_until_served(&platform, "broken.local.workers.localhost", "/x").await;
    assert_ne!(reply.status, 200, "{}", reply.text());
    let failed = |trace: &[Received], service: &str, name: &str| {
        named(trace, service, name).is_some_and(|s| s.attr("code") == Some("dns_error"))
    };
    let trace = receiver
        .trace_until(&trace_id, |trace| {
            failed(trace, "wvpc-iris", "connect")
                && failed(trace, "wvpc-binding-worker", "binding_call")
                && failed(trace, "wvpc-runtime", "binding_fetch")
        })
        .await;
    assert!(failed(&trace, "wvpc-iris", "dns"), "{trace:#?}");
    let request_id = reply.header("wvpc-request-id").expect("a request id");
    assert_eq!(
        named(&trace, "wvpc-iris", "connect")
            .unwrap()
            .attr("request_id"),
        Some(request_id)
    );
}

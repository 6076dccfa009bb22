//! Traces: the `tracing` spans of a request's hops, exported over OTLP/HTTP protobuf when
//! `--otlp-endpoint` is given, and the trace context that crosses from one hop to the next.
//!
//! [`Exporter::start`] builds the OpenTelemetry pipeline (a batch processor and the OTLP
//! exporter, resource `service.name` = `wvpc-<role>`); its [`Exporter::layer`] goes into the
//! process's subscriber. Without an exporter no span is enabled at all, so the spans the
//! hops create cost a callsite check each.
//!
//! Context crosses hops as text: W3C `traceparent` (runtime → binding-worker in the capnp
//! `BindingContext`, binding-worker → iris as a CONNECT header) and cloudflared's
//! `cf-trace-id` (iris → connector in the `ConnectRequest` metadata), whose value is
//! Jaeger's `{trace-id}:{span-id}:{parent-span-id}:{flags}`. [`traceparent`] /
//! [`cf_trace_id`] write a span's context, [`continue_traceparent`] /
//! [`continue_cf_trace_id`] make a new span the child of a received one. A value that does
//! not parse is ignored: the span starts a trace of its own.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;

/// The W3C header (and capnp field) name of a trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The longest a shutdown waits for the last spans to be sent.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("--otlp-endpoint {endpoint:?} is not an http:// URL ({why})")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
    /// The OTLP exporter refused its configuration.
    #[error("cannot start the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The traces URL.
        endpoint: String,
        /// The exporter's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The OTLP pipeline of one process: spans are batched and sent to `<endpoint>/v1/traces`
/// from the SDK's own thread. Dropping it (or [`Exporter::shutdown`]) sends what is left.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts exporting to `endpoint` (the collector's base URL, as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` means it) as `service.name` `wvpc-<role>`. The batch
    /// processor honours the standard `OTEL_BSP_*` variables.
    pub fn start(endpoint: &str, role: &str) -> Result<Self, TraceError> {
        let traces = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces.as_str())
            .build()
            .map_err(|source| TraceError::Exporter {
                endpoint: traces.to_string(),
                source,
            })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(format!("wvpc-{role}"))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The subscriber layer that turns the hops' spans (INFO and above, from the `wvpc_*`
    /// crates) into OpenTelemetry spans; warnings and errors logged inside them become
    /// span events.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("wvpc");
        // No thread, source location or busy/idle times on each span: less work per span.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(FilterFn::new(exported))
    }

    /// Sends the spans still in the batch and stops the exporter thread. Blocks (at most a
    /// few seconds): call it outside the async runtime, at exit.
    pub fn shutdown(self) {
        // Drop does the work; this names the moment.
        drop(self);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            eprintln!("warning: the last spans were not all exported: {err}");
        }
    }
}

/// Which callsites the exporter takes: our spans, and the warnings inside them.
fn exported(metadata: &Metadata<'_>) -> bool {
    if metadata.is_span() {
        metadata.target().starts_with("wvpc") && *metadata.level() <= Level::INFO
    } else {
        *metadata.level() <= Level::WARN
    }
}

/// `<endpoint>/v1/traces`, for an `http(s)://` base URL (a trailing `/` or not).
fn traces_url(endpoint: &str) -> Result<url::Url, TraceError> {
    let bad = |why: String| TraceError::Endpoint {
        endpoint: endpoint.to_owned(),
        why,
    };
    let base = url::Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
        return Err(bad("expected http://host:port".to_owned()));
    }
    let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
    let mut traces = base;
    traces.set_path(&path);
    Ok(traces)
}

/// The W3C `traceparent` of `span`, `None` when nothing exports it.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = OneValue(None);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0
}

/// Makes `span` (just created, not yet entered) the child of the remote span a
/// `traceparent` value names. An empty or malformed value leaves `span` a root.
pub fn continue_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Received(traceparent));
    if cx.span().span_context().is_valid() {
        // Fails only for a span already started, which callers do not pass.
        let _ = span.set_parent(cx);
    }
}

/// The `cf-trace-id` value of `span` (Jaeger's `{trace-id}:{span-id}:0:{flags}`), `None`
/// when nothing exports it.
pub fn cf_trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let context = cx.span().span_context().clone();
    if !context.is_valid() {
        return None;
    }
    Some(format!(
        "{:032x}:{:016x}:0:{:x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
}

/// Makes `span` (just created, not yet entered) the child of the span a `cf-trace-id`
/// value names. An empty or malformed value leaves `span` a root.
pub fn continue_cf_trace_id(span: &tracing::Span, value: &str) {
    if value.is_empty() || span.is_disabled() {
        return;
    }
    if let Some(context) = parse_cf_trace_id(value) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(context));
    }
}

/// Jaeger's `{trace-id}:{span-id}:{parent-span-id}:{flags}` (ids in hex, the trace id up to
/// 32 digits, flags bit 0 = sampled).
fn parse_cf_trace_id(value: &str) -> Option<SpanContext> {
    let mut parts = value.split(':');
    let (trace_id, span_id, _parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || trace_id.len() > 32 || span_id.len() > 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// A carrier holding one received `traceparent`.
struct Received<'a>(&'a str);

impl Extractor for Received<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// A carrier that keeps the `traceparent` written into it.
struct OneValue(Option<String>);

impl Injector for OneValue {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_is_the_base_url_with_v1_traces() {
        let url = |base: &str| traces_url(base).map(|u| u.to_string());
        assert_eq!(
            url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/otlp/").unwrap(),
            "http://collector:4318/otlp/v1/traces"
        );
        assert!(matches!(
            traces_url("collector:4318"),
            Err(TraceError::Endpoint { .. })
        ));
        assert!(matches!(
            traces_url("not a url"),
            Err(TraceError::Endpoint { .. })
        ));
    }

    #[test]
    fn a_cf_trace_id_is_read_as_jaeger_writes_it() {
        let context = parse_cf_trace_id("4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1")
            .expect("valid");
        assert_eq!(
            format!("{:032x}", context.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", context.span_id()), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        // Jaeger drops leading zeros.
        let short = parse_cf_trace_id("abc:def:0:0").expect("short ids");
        assert_eq!(
            format!("{:032x}", short.trace_id()),
            "00000000000000000000000000000abc"
        );
        assert!(!short.is_sampled());
        for bad in [
            "",
            "abc",
            "0:0:0:1",
            "xyz:def:0:1",
            "a:b:c:d:e",
            "abc:def:0",
        ] {
            assert!(parse_cf_trace_id(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_context_written_by_one_span_is_continued_by_another() {
        use tracing_subscriber::layer::SubscriberExt as _;

        // The pipeline without an exporter: spans get real contexts, nothing is sent.
        let exporter = Exporter {
            provider: SdkTracerProvider::builder().build(),
        };
        let subscriber = tracing_subscriber::registry().with(exporter.layer());
        tracing::subscriber::with_default(subscriber, || {
            let caller = tracing::info_span!("wvpc_caller");
            let header = traceparent(&caller).expect("an exported span has a context");
            let trace_id = format!("{:032x}", caller.context().span().span_context().trace_id());
            let span_id = format!("{:016x}", caller.context().span().span_context().span_id());
            assert_eq!(header, format!("00-{trace_id}-{span_id}-01"));

            let callee = tracing::info_span!("wvpc_callee");
            continue_traceparent(&callee, &header);
            let continued = callee.context().span().span_context().clone();
            assert_eq!(format!("{:032x}", continued.trace_id()), trace_id);

            let jaeger = cf_trace_id(&callee).expect("a context");
            let connector = tracing::info_span!("wvpc_connector");
            continue_cf_trace_id(&connector, &jaeger);
            let context = connector.context().span().span_context().clone();
            assert_eq!(format!("{:032x}", context.trace_id()), trace_id);
            assert_ne!(context.span_id(), continued.span_id());

            // A value that does not parse leaves the span a root of its own trace.
            let other = tracing::info_span!("wvpc_other");
            continue_traceparent(&other, "00-nonsense");
            let own = other.context().span().span_context().clone();
            assert_ne!(format!("{:032x}", own.trace_id()), trace_id);
        });
    }

    #[test]
    fn without_an_exporter_spans_carry_no_context() {
        let span = tracing::info_span!("wvpc_test");
        assert_eq!(traceparent(&span), None);
        assert_eq!(cf_trace_id(&span), None);
        continue_traceparent(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    }
}

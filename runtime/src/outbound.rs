//! Egress policy of a script: requests made through `vpc.fetch` go to the binding-worker,
//! everything else is denied (`HTTP-request-denied`). There is no other way out: the runtime
//! builds wasmtime-wasi-http without its default client.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks};
use wvpc_errors::{ErrorCode, ProxyError};

use crate::binding_client::{BindingClient, FetchContext};
use crate::error_map::wasi_http_error;

/// What every request of one script shares: who it is and what it may reach.
pub(crate) struct ScriptBindings {
    /// Script name (`name` in its config).
    pub script: String,
    /// Account that owns the script.
    pub account: String,
    /// Binding name → VPC Service id (hyphenated UUID), from `vpc_services`.
    pub services: HashMap<String, String>,
    /// The binding-worker connection.
    pub client: BindingClient,
}

/// Where the next `send_request` goes: one binding of the script.
pub(crate) struct Route {
    binding: String,
    service_id: String,
}

/// The `WasiHttpHooks` of one request.
pub(crate) struct OutboundHooks {
    bindings: Arc<ScriptBindings>,
    request_id: Arc<str>,
    /// Set by `vpc.fetch` right before it delegates to wasi-http's `handle`.
    pending: Option<Route>,
}

impl OutboundHooks {
    pub fn new(bindings: Arc<ScriptBindings>, request_id: Arc<str>) -> Self {
        Self {
            bindings,
            request_id,
            pending: None,
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The route for `binding`, if the script declares it.
    pub fn route_for(&self, binding: &str) -> Option<Route> {
        let service_id = self.bindings.services.get(binding)?;
        Some(Route {
            binding: binding.to_owned(),
            service_id: service_id.clone(),
        })
    }

    pub fn set_pending(&mut self, route: Route) {
        self.pending = Some(route);
    }

    pub fn clear_pending(&mut self) {
        self.pending = None;
    }
}

type ErrorFuture = Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type SendFuture = Box<
    dyn Future<Output = Result<(http::Response<WasiBody>, ErrorFuture), wasmtime_wasi_http::Error>>
        + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: ErrorFuture,
    ) -> SendFuture {
        let request_id = self.request_id.clone();
        let Some(route) = self.pending.take() else {
            tracing::info!(
                request_id = %request_id,
                uri = %request.uri(),
                "denied a script's outgoing request that did not go through a binding"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        let bindings = self.bindings.clone();
        Box::new(async move {
            // The URL's host only becomes the Host header / SNI at the binding-worker, but it
            // must be there: fetch() takes absolute URLs only.
            if request.uri().host().is_none_or(str::is_empty) {
                return Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid);
            }
            let context = FetchContext {
                service_id: route.service_id,
                script: bindings.script.clone(),
                account: bindings.account.clone(),
                request_id: request_id.to_string(),
                binding: route.binding,
            };
            let binding = context.binding.clone();
            let first_byte_timeout = options.and_then(|o| o.first_byte_timeout);
            match bindings
                .client
                .fetch(context, request, first_byte_timeout)
                .await
            {
                Ok(response) => Ok((response, Box::new(async { Ok(()) }) as ErrorFuture)),
                Err(err) => {
                    log_fetch_error(&request_id, &binding, &err);
                    Err(wasi_http_error(&err))
                }
            }
        })
    }

    /// The URL carries the host to the binding-worker; no `Host` header is forwarded.
    fn set_host_header(&mut self) -> bool {
        false
    }

    /// A script may ask for an upgrade (WebSocket), which the binding-worker passes through
    /// end to end: `Upgrade` and `Connection` are allowed; the other hop-by-hop headers stay
    /// forbidden.
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        Arc::new(is_forbidden)
    }

    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        is_forbidden(name)
    }
}

/// wasi-http's default forbidden headers, less the two an upgrade needs.
fn is_forbidden(name: &http::HeaderName) -> bool {
    *name != http::header::UPGRADE
        && *name != http::header::CONNECTION
        && wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

/// The one log line per failed binding fetch.
fn log_fetch_error(request_id: &str, binding: &str, err: &ProxyError) {
    if err.code == ErrorCode::ProxyInternalError {
        tracing::error!(request_id, binding, code = %err.code, details = ?err.details, "binding fetch failed");
    } else {
        tracing::info!(
            request_id,
            binding,
            code = %err.code,
            rcode = ?err.rcode,
            details = ?err.details,
            "binding fetch failed"
        );
    }
}

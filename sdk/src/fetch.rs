//! [`Env`] and [`Fetcher`]: the script's bindings, and `fetch` through one of them.

use std::time::Duration;

use wasip2::http::types::{FutureIncomingResponse, OutgoingRequest, Scheme};

use crate::__bindings::wvpc::bindings::vpc;
use crate::body::{IncomingBody, Sent};
use crate::error::ProxyError;
use crate::headers::Headers;
use crate::message::{Request, Response, UrlParts, wasi_method};
use crate::socket::{PendingSocket, Socket};

/// The script's environment: its bindings, by the names declared in `vpc_services` and
/// `vpc_networks`.
#[derive(Debug, Default)]
pub struct Env {
    _private: (),
}

impl Env {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }

    /// The binding named `name`. Whether it exists is checked when it is used: a name not
    /// declared in the script's config fails with `proxy_configuration_error`.
    pub fn binding(&self, name: &str) -> Fetcher {
        Fetcher {
            name: name.to_owned(),
        }
    }
}

/// A VPC Service or VPC Network binding (`env.NAME` in a Worker).
#[derive(Debug, Clone)]
pub struct Fetcher {
    name: String,
}

impl Fetcher {
    /// The binding's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `request` to the binding's VPC Service and returns its response head; the
    /// response body streams as it is read. Redirects are followed ([`Redirect::Follow`],
    /// the Workers default); see [`Fetcher::fetch_with`].
    ///
    /// The URL must be absolute (`http://` or `https://`): a relative URL is refused with
    /// `http_request_error` before anything is sent. Through a `vpc_services` binding its
    /// host is not used for routing: it becomes the `Host` header (and TLS SNI for `https`);
    /// the scheme picks the service's HTTP or HTTPS port; a port in the URL is ignored.
    /// Through a `vpc_networks` binding the URL's host and port *are* the destination inside
    /// the binding's network (80 / 443 by default; a hostname is resolved through the
    /// tunnel), and a followed redirect's `Location` picks the next one. Method, path, query,
    /// headers and body are forwarded.
    ///
    /// The request body is sent completely before the response is awaited, so an origin that
    /// answers before reading a large body is served only after the body went out.
    ///
    /// Errors are failures to reach the origin (`dns_error`, `connection_refused`,
    /// `destination_unavailable`, …) or a limit of the request (`subrequest_limit_reached`,
    /// …); an origin's 4xx/5xx is an `Ok` response.
    pub fn fetch(&self, request: Request) -> Result<Response, ProxyError> {
        self.fetch_with(request, FetchOptions::default())
    }

    /// Opens a raw TCP connection through the binding, like `env.NAME.connect(address)` in a
    /// Worker, and waits until it is open (see [`crate::socket`]).
    ///
    /// - A `vpc_networks` binding: `address` is the destination, `host:port` (`[v6]:port`
    ///   for an IPv6 literal).
    /// - A `vpc_services` binding: `address` must be empty; the service's `tcp_port` is
    ///   dialled (`http_request_denied` when it has none).
    ///
    /// At once, without a connection: a binding the config does not declare is
    /// `proxy_configuration_error`, a malformed address `destination_not_found`, a spent
    /// limit `subrequest_limit_reached` / `connection_limit_reached`. Then the same codes as a
    /// fetch for failures on the way (`connection_refused`, `dns_error`, …).
    pub fn connect(&self, address: &str) -> Result<Socket, ProxyError> {
        self.start_connect(address)?.wait()
    }

    /// Starts opening a connection ([`Fetcher::connect`]) without waiting for it, e.g. to
    /// give up after a time of the script's choosing ([`PendingSocket::wait_timeout`]).
    pub fn start_connect(&self, address: &str) -> Result<PendingSocket, ProxyError> {
        PendingSocket::start(&self.name, address)
    }

    /// [`Fetcher::fetch`] with options, like `fetch(request, init)` in a Worker.
    pub fn fetch_with(
        &self,
        request: Request,
        options: FetchOptions,
    ) -> Result<Response, ProxyError> {
        self.start(request, options)?.wait()
    }

    /// Sends `request` (its body included) and returns without waiting for the response,
    /// so several fetches can be in flight at once. At most `limits.connections` (default 6)
    /// run at the same time per request; the others wait their turn in the host.
    pub fn start(
        &self,
        request: Request,
        options: FetchOptions,
    ) -> Result<PendingResponse, ProxyError> {
        let (method, url, headers, mut body) = request.into_parts();
        let parts = UrlParts::split(&url);
        let scheme = match parts.scheme {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(s) => {
                return Err(ProxyError::request_error(format!(
                    "fetch() supports http and https URLs, not {s}: {url:?}"
                )));
            }
            None => {
                return Err(ProxyError::request_error(format!(
                    "fetch() needs an absolute URL such as http://api.internal/path, got {url:?}"
                )));
            }
        };
        if parts.authority.is_empty() {
            return Err(ProxyError::request_error(format!(
                "the URL {url:?} has no host (it becomes the Host header)"
            )));
        }

        let fields = headers.to_wasi().map_err(|invalid| {
            ProxyError::request_error(format!("invalid header {:?}", invalid.0))
        })?;
        let outgoing = OutgoingRequest::new(fields);
        let path = if parts.path_with_query.is_empty() {
            "/"
        } else {
            parts.path_with_query
        };
        outgoing
            .set_method(&wasi_method(&method))
            .map_err(|()| ProxyError::request_error(format!("invalid method {method:?}")))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| ProxyError::request_error(format!("invalid scheme in {url:?}")))?;
        outgoing
            .set_authority(Some(parts.authority))
            .map_err(|()| ProxyError::request_error(format!("invalid host in {url:?}")))?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| ProxyError::request_error(format!("invalid path in {url:?}")))?;
        let Ok(out_body) = outgoing.body() else {
            return Err(ProxyError::internal());
        };

        let init = vpc::FetchInit {
            redirect: match options.redirect {
                Redirect::Follow => vpc::RedirectMode::Follow,
                Redirect::Manual => vpc::RedirectMode::Manual,
            },
        };
        // A small body known whole is written first, so that the host sends it with the
        // request; any other is written after the request starts, while the binding already
        // streams it to the origin.
        let out_body = if body.settle_whole() {
            std::mem::take(&mut body).send(out_body)?;
            None
        } else {
            Some(out_body)
        };
        let pending = vpc::fetch(&self.name, outgoing, None, init).map_err(ProxyError::from)?;
        if let Some(out) = out_body {
            match body.send(out) {
                // Body finished, or the binding stopped taking it (its outcome tells why).
                Ok(Sent::Complete | Sent::Closed) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(PendingResponse { pending })
    }
}

/// What a 3xx response with a `Location` does to a fetch (`RequestInit.redirect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Redirect {
    /// Send the request again through the same binding to the `Location`'s path and query
    /// (its host only becomes the `Host` header), at most 20 times. 303 — and 301/302 after
    /// a POST — become a GET without body; 307/308 send the body again, which works for
    /// bodies of at most 1 MiB (else `redirect_body_not_replayable`).
    #[default]
    Follow,
    /// Return the 3xx response itself.
    Manual,
}

/// Options of one fetch (a Worker's `RequestInit`, beyond the request itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchOptions {
    /// What a redirect does; [`Redirect::Follow`] by default.
    pub redirect: Redirect,
}

impl FetchOptions {
    /// Options with `redirect` set.
    pub fn redirect(mut self, redirect: Redirect) -> Self {
        self.redirect = redirect;
        self
    }
}

/// A fetch in flight ([`Fetcher::start`]).
#[derive(Debug)]
pub struct PendingResponse {
    pending: FutureIncomingResponse,
}

impl PendingResponse {
    /// Whether the response head (or the failure) has arrived, so [`wait`](Self::wait)
    /// will not block.
    pub fn is_ready(&self) -> bool {
        self.pending.subscribe().ready()
    }

    /// Blocks until the response head arrives; the body streams as it is read.
    pub fn wait(self) -> Result<Response, ProxyError> {
        self.pending.subscribe().block();
        let response = match self.pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(ProxyError::from(code)),
            Some(Err(())) | None => return Err(ProxyError::internal()),
        };
        let headers = Headers::from_wasi(&response.headers());
        let body = response
            .consume()
            .map(|b| IncomingBody::new(b).into())
            .unwrap_or_default();
        Ok(Response::from_parts(response.status(), headers, body))
    }

    /// [`wait`](Self::wait), for at most `timeout`: `None` when the response head has not
    /// arrived by then. The fetch is then dropped (its connection closed), so a script can
    /// answer on its own — a `504`, a cached copy — instead of waiting for a slow service.
    pub fn wait_timeout(self, timeout: Duration) -> Option<Result<Response, ProxyError>> {
        let arrived = {
            let head = self.pending.subscribe();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let timer = wasip2::clocks::monotonic_clock::subscribe_duration(nanos);
            wasip2::io::poll::poll(&[&head, &timer]);
            // The pollables are dropped here, before the response they watch.
            head.ready()
        };
        arrived.then(|| self.wait())
    }
}

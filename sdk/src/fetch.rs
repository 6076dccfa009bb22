//! [`Env`] and [`Fetcher`]: the script's bindings, and `fetch` through one of them.

use wasip2::http::types::{OutgoingRequest, Scheme};

use crate::__bindings::wvpc::bindings::vpc;
use crate::body::{IncomingBody, Sent};
use crate::error::ProxyError;
use crate::headers::Headers;
use crate::message::{Request, Response, UrlParts, wasi_method};

/// The script's environment: its bindings, by the names declared in `vpc_services`.
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

/// A VPC Service binding (`env.NAME` in a Worker).
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
    /// response body streams as it is read.
    ///
    /// The URL must be absolute. Its host is not used for routing: it becomes the `Host`
    /// header (and TLS SNI for `https`); the scheme picks the service's HTTP or HTTPS port.
    /// Method, path, query, headers and body are forwarded.
    ///
    /// The request body is sent completely before the response is awaited, so an origin that
    /// answers before reading a large body is served only after the body went out.
    ///
    /// Errors are failures to reach the origin (`dns_error`, `connection_refused`,
    /// `destination_unavailable`, …); an origin's 4xx/5xx is an `Ok` response.
    pub fn fetch(&self, request: Request) -> Result<Response, ProxyError> {
        let (method, url, headers, body) = request.into_parts();
        let url = UrlParts::split(&url);
        let scheme = match url.scheme {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            // fetch() needs an absolute http(s) URL.
            _ => return Err(ProxyError::request_error()),
        };
        if url.authority.is_empty() {
            return Err(ProxyError::request_error());
        }

        let fields = headers.to_wasi().map_err(|_| ProxyError::request_error())?;
        let outgoing = OutgoingRequest::new(fields);
        let path = if url.path_with_query.is_empty() {
            "/"
        } else {
            url.path_with_query
        };
        outgoing
            .set_method(&wasi_method(&method))
            .map_err(|()| ProxyError::request_error())?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| ProxyError::request_error())?;
        outgoing
            .set_authority(Some(url.authority))
            .map_err(|()| ProxyError::request_error())?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| ProxyError::request_error())?;
        let Ok(out_body) = outgoing.body() else {
            return Err(ProxyError::internal());
        };

        // The host starts the request now; the body is written afterwards, while the binding
        // already streams it to the origin.
        let pending = vpc::fetch(&self.name, outgoing, None).map_err(ProxyError::from)?;
        match body.send(out_body) {
            // Body finished, or the binding stopped taking it (its outcome tells why).
            Ok(Sent::Complete | Sent::Closed) => {}
            Err(err) => return Err(err),
        }

        pending.subscribe().block();
        let response = match pending.get() {
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
}

//! [`Request`] and [`Response`]: the same types for what the script receives, what it sends
//! to a binding, and what it answers — as in the Fetch API.

use wasip2::http::types::{IncomingRequest, Method, Scheme};

use crate::body::Body;
use crate::headers::Headers;

/// An HTTP request: the script's incoming request, or one it sends with
/// [`Fetcher::fetch`](crate::Fetcher::fetch).
#[derive(Debug)]
pub struct Request {
    method: String,
    url: String,
    headers: Headers,
    body: Body,
}

impl Request {
    /// A request without headers or body. `url` must be absolute (`http://host/path?query`)
    /// when sent through a binding; its host becomes the `Host` header.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Headers::new(),
            body: Body::empty(),
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// The method (`GET`, `POST`, …).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The absolute URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The path and query of the URL (`/path?query`), `/` when it has none.
    pub fn path_with_query(&self) -> &str {
        let parts = UrlParts::split(&self.url);
        if parts.path_with_query.is_empty() {
            "/"
        } else {
            parts.path_with_query
        }
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The header fields, to change.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// Takes the body out, leaving an empty one.
    pub fn take_body(&mut self) -> Body {
        std::mem::take(&mut self.body)
    }

    /// The body.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Same request, other URL (method, headers and body are kept).
    #[must_use]
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Same request, other method.
    #[must_use]
    pub fn with_method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// Adds a header field.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// The incoming request from the host, its body left streaming.
    pub(crate) fn from_incoming(request: IncomingRequest) -> Self {
        let scheme = match request.scheme() {
            Some(Scheme::Https) => "https".to_owned(),
            Some(Scheme::Other(other)) => other,
            Some(Scheme::Http) | None => "http".to_owned(),
        };
        let authority = request.authority().unwrap_or_default();
        let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let headers = Headers::from_wasi(&request.headers());
        let body = request
            .consume()
            .map(|b| Body::from(crate::body::IncomingBody::new(b)))
            .unwrap_or_default();
        Self {
            method: method_name(&request.method()),
            url: format!("{scheme}://{authority}{path}"),
            headers,
            body,
        }
    }

    pub(crate) fn into_parts(self) -> (String, String, Headers, Body) {
        (self.method, self.url, self.headers, self.body)
    }
}

/// An HTTP response: what a binding returned, or what the script answers.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: Headers,
    body: Body,
}

impl Response {
    /// A response with `status`, no headers and no body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Headers::new(),
            body: Body::empty(),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The header fields.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The header fields, to change.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The body.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Takes the body out, leaving an empty one.
    pub fn take_body(&mut self) -> Body {
        std::mem::take(&mut self.body)
    }

    /// Adds a header field.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    pub(crate) fn from_parts(status: u16, headers: Headers, body: Body) -> Self {
        Self {
            status,
            headers,
            body,
        }
    }

    pub(crate) fn into_parts(self) -> (u16, Headers, Body) {
        (self.status, self.headers, self.body)
    }
}

/// `scheme://authority/path?query#fragment`, split without validation.
pub(crate) struct UrlParts<'a> {
    pub scheme: Option<&'a str>,
    pub authority: &'a str,
    pub path_with_query: &'a str,
}

impl<'a> UrlParts<'a> {
    pub fn split(url: &'a str) -> Self {
        let url = url.split('#').next().unwrap_or_default();
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, url),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_with_query) = rest.split_at(end);
        Self {
            scheme,
            authority,
            path_with_query,
        }
    }
}

pub(crate) fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

pub(crate) fn wasi_method(method: &str) -> Method {
    match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

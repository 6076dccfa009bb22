//! Reading a `VpcBinding.fetch` call into a request the proxy can send: the URL is checked
//! (absolute `http`/`https`), split into what routes (scheme → port at iris) and what is only
//! forwarded (host → `Host`, path and query), and hop-by-hop headers are removed.

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme as UriScheme};
use http::{Method, Uri};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::MAX_HEAD_HEADERS;
use wvpc_schemas::binding_capnp::{binding_context, request_head};

/// The URL scheme, which picks the service's port and whether TLS runs to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The scheme's well-known port, used in the CONNECT authority (iris picks the real one).
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling, for iris's logs and authorization.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) request_id: String,
    pub(crate) account: String,
    pub(crate) script: String,
    pub(crate) binding: String,
}

/// One validated fetch.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    /// The VPC service the binding points at: the only thing that routes.
    pub(crate) service_id: Uuid,
    pub(crate) scheme: Scheme,
    /// The URL's host without its port: the `Host` header (and SNI). Never routes.
    pub(crate) host: String,
    pub(crate) method: Method,
    pub(crate) path_and_query: PathAndQuery,
    /// End-to-end headers only; `Host` is set from [`Self::host`] when sending.
    pub(crate) headers: HeaderMap,
    /// The protocol asked for with `Upgrade` (plus `Connection: upgrade`), e.g. `websocket`:
    /// the one hop-by-hop header a proxy passes on, since the upgrade is end to end.
    pub(crate) upgrade: Option<HeaderValue>,
    pub(crate) caller: Caller,
}

impl FetchRequest {
    /// Whether the request may carry a body even though no header frames one. Methods
    /// without body semantics are sent with an empty body if the script sends none (rather
    /// than as chunked), which needs a look at the body stream first.
    pub(crate) fn body_is_framed(&self) -> bool {
        self.headers.contains_key(header::CONTENT_LENGTH)
            || self.headers.contains_key(header::TRANSFER_ENCODING)
    }

    /// Methods for which a body is unusual, so that an unframed one is probably empty.
    pub(crate) fn method_expects_no_body(&self) -> bool {
        matches!(
            self.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        )
    }
}

fn request_error(details: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::HttpRequestError).with_details(details)
}

fn text<'a>(
    field: &str,
    value: capnp::Result<capnp::text::Reader<'a>>,
) -> Result<&'a str, ProxyError> {
    value
        .map_err(|e| request_error(format!("{field} is unreadable: {e}")))?
        .to_str()
        .map_err(|_| request_error(format!("{field} is not UTF-8")))
}

/// Reads and validates the call's context and head.
pub(crate) fn read_fetch(
    context: binding_context::Reader<'_>,
    head: request_head::Reader<'_>,
) -> Result<FetchRequest, ProxyError> {
    let caller = Caller {
        request_id: text("context.requestId", context.get_request_id())?.to_owned(),
        account: text("context.account", context.get_account())?.to_owned(),
        script: text("context.script", context.get_script())?.to_owned(),
        binding: text("context.binding", context.get_binding())?.to_owned(),
    };
    let service_id_text = text("context.serviceId", context.get_service_id())?;
    let service_id = Uuid::parse_str(service_id_text).map_err(|_| {
        ProxyError::new(ErrorCode::ProxyConfigurationError).with_details(format!(
            "binding {:?} points at service id {service_id_text:?}, which is not a UUID",
            caller.binding
        ))
    })?;

    let url = text("head.url", head.get_url())?;
    let (scheme, host, path_and_query) = read_url(url)?;

    let method_text = text("head.method", head.get_method())?;
    let method = Method::from_bytes(method_text.as_bytes())
        .map_err(|_| request_error(format!("{method_text:?} is not an HTTP method")))?;
    if method == Method::CONNECT {
        return Err(request_error(
            "CONNECT cannot be sent with fetch(); use connect() for raw TCP",
        ));
    }

    let list = head
        .get_headers()
        .map_err(|e| request_error(format!("head.headers: {e}")))?;
    // The count comes from the peer: checked before it sizes anything.
    if list.len() > MAX_HEAD_HEADERS {
        return Err(request_error(format!(
            "the request has {} headers; at most {MAX_HEAD_HEADERS} can be sent through a \
             binding",
            list.len()
        )));
    }
    let mut headers = HeaderMap::with_capacity(list.len() as usize);
    for h in list.iter() {
        let name = text("header name", h.get_name())?;
        let value = h
            .get_value()
            .map_err(|e| request_error(format!("header {name:?}: {e}")))?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| request_error(format!("{name:?} is not a valid header name")))?;
        let value = HeaderValue::from_bytes(value).map_err(|_| {
            request_error(format!("the value of header {name} has bytes HTTP forbids"))
        })?;
        headers.append(name, value);
    }
    let upgrade = requested_upgrade(&headers);
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // The body is re-framed hop by hop; a length next to a transfer-coding is void
        // (RFC 9112 §6.3) and would only confuse the origin.
        headers.remove(header::CONTENT_LENGTH);
    }

    Ok(FetchRequest {
        service_id,
        scheme,
        host,
        method,
        path_and_query,
        headers,
        upgrade,
        caller,
    })
}

/// The `Upgrade` value when `Connection` names `upgrade` (RFC 9110 §7.8); else `None`.
pub(crate) fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_names_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_names_upgrade {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Splits an absolute URL into scheme, host (without port) and path+query. The fragment is
/// never sent; the port is ignored (the service's port for the scheme is used).
fn read_url(url: &str) -> Result<(Scheme, String, PathAndQuery), ProxyError> {
    let without_fragment = url.split_once('#').map_or(url, |(before, _)| before);
    let uri: Uri = without_fragment.parse().map_err(|e| {
        request_error(format!(
            "URL {url:?} is not valid ({e}); use an absolute http:// or https:// URL"
        ))
    })?;
    let scheme = match uri.scheme() {
        Some(s) if *s == UriScheme::HTTP => Scheme::Http,
        Some(s) if *s == UriScheme::HTTPS => Scheme::Https,
        Some(other) => {
            return Err(request_error(format!(
                "URL {url:?} has scheme {other:?}; only http and https are supported"
            )));
        }
        None => {
            return Err(request_error(format!(
                "URL {url:?} is relative; fetch() through a VPC binding needs an absolute \
                 http:// or https:// URL"
            )));
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| request_error(format!("URL {url:?} has no host")))?
        .to_ascii_lowercase();
    let path_and_query = match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        Some(pq) => PathAndQuery::try_from(format!("/{pq}"))
            .map_err(|e| request_error(format!("URL {url:?} has an invalid path: {e}")))?,
        None => PathAndQuery::from_static("/"),
    };
    Ok((scheme, host, path_and_query))
}

/// Removes the headers that describe one hop rather than the message (RFC 9110 §7.6.1):
/// `Connection` and every header it names, plus the well-known hop-by-hop ones.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // Every `Proxy-*` header speaks to one proxy hop (credentials, `Proxy-Connection`, …).
    let proxy_headers: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy_headers {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Result<(Scheme, String, String), ErrorCode> {
        read_url(u)
            .map(|(s, h, pq)| (s, h, pq.to_string()))
            .map_err(|e| e.code)
    }

    #[test]
    fn absolute_urls_split_into_scheme_host_and_path() {
        assert_eq!(
            url("http://API.internal:8080/v1/items?q=1#frag"),
            Ok((Scheme::Http, "api.internal".into(), "/v1/items?q=1".into()))
        );
        assert_eq!(
            url("https://10.0.0.5"),
            Ok((Scheme::Https, "10.0.0.5".into(), "/".into()))
        );
        assert_eq!(
            url("http://[fd00::5]:81/x"),
            Ok((Scheme::Http, "[fd00::5]".into(), "/x".into()))
        );
    }

    #[test]
    fn relative_and_non_http_urls_are_request_errors() {
        for bad in [
            "/v1/items",
            "api.internal/x",
            "ftp://api.internal/",
            "http:///x",
            "not a url",
        ] {
            assert_eq!(
                url(bad).map(|_| ()),
                Err(ErrorCode::HttpRequestError),
                "{bad}"
            );
        }
        let err = read_url("/v1/items").unwrap_err();
        assert!(err.details.unwrap().contains("absolute"));
    }

    #[test]
    fn an_upgrade_counts_only_when_connection_names_it() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(requested_upgrade(&h), None);
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-hop, keep-alive"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("secret"));
        h.insert("proxy-x-custom", HeaderValue::from_static("hop"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end-to-end"], "kept");
    }
}

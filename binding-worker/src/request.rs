//! Reading a `VpcBinding.fetch` call into a request the proxy can send: the URL is checked
//! (absolute `http`/`https`), split into what routes and what is only forwarded, and
//! hop-by-hop headers are removed. What routes depends on the binding ([`BindingTarget`]):
//! for a service, only its id (the scheme picks its port at iris; the URL's host is `Host`
//! and SNI, its port is ignored); for a network, the URL's host and port are the destination
//! (defaults 80 / 443). [`read_connect`] reads a `VpcBinding.connect` call the same way.

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme as UriScheme};
use http::{Method, Uri};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_capnp::{binding_context, request_head};
use wvpc_schemas::{MAX_HEAD_HEADERS, NetworkTarget};

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

/// What a binding reaches: what routes its fetches and connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingTarget {
    /// A `vpc_services` binding: the service's id is all that routes.
    Service(Uuid),
    /// A `vpc_networks` binding: the URL's (or address's) host and port are the destination
    /// inside this network.
    Network(NetworkTarget),
}

impl fmt::Display for BindingTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(id) => write!(f, "service {id}"),
            Self::Network(network) => write!(f, "network {network}"),
        }
    }
}

/// Who is calling, for iris's logs and authorization.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) request_id: String,
    pub(crate) account: String,
    pub(crate) script: String,
    pub(crate) binding: String,
    /// The runtime's `traceParent` (empty when its spans are not exported, or from a
    /// runtime before it).
    pub(crate) trace_parent: String,
}

impl Caller {
    /// The span of this binding call (`call`: `fetch` or `connect`), the child of the
    /// runtime's span when a trace context came with it.
    pub(crate) fn span(&self, call: &'static str, target: &BindingTarget) -> tracing::Span {
        let span = tracing::info_span!(
            "binding_call",
            call,
            request_id = %self.request_id,
            destination = %target,
            binding = %self.binding,
            code = tracing::field::Empty,
        );
        wvpc_observe::trace::continue_traceparent(&span, &self.trace_parent);
        span
    }
}

/// One validated fetch.
#[derive(Debug, Clone)]
pub(crate) struct FetchRequest {
    /// What the binding points at.
    pub(crate) target: BindingTarget,
    pub(crate) scheme: Scheme,
    /// The URL's host without its port: the `Host` header (and SNI). Routes only for a
    /// network binding (then it is the destination).
    pub(crate) host: String,
    /// The URL's port, else the scheme's: the destination port of a network binding
    /// (ignored for a service, whose port iris picks by scheme).
    pub(crate) port: u16,
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
    /// The `Host` header: the URL's host, with its port when a network binding goes to a
    /// port other than the scheme's (for a service the URL's port means nothing).
    pub(crate) fn host_header(&self) -> String {
        match self.target {
            BindingTarget::Network(_) if self.port != self.scheme.default_port() => {
                format!("{}:{}", self.host, self.port)
            }
            _ => self.host.clone(),
        }
    }

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
        trace_parent: text("context.traceParent", context.get_trace_parent())?.to_owned(),
    };
    let target = read_target(context, &caller.binding)?;

    let url = text("head.url", head.get_url())?;
    let (scheme, host, port, path_and_query) = read_url(url)?;
    if matches!(target, BindingTarget::Network(_)) && port == 0 {
        return Err(request_error(format!(
            "URL {url:?} has port 0, which no destination listens on"
        )));
    }

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
        target,
        scheme,
        host,
        port,
        method,
        path_and_query,
        headers,
        upgrade,
        caller,
    })
}

/// What the binding in `context` points at: `serviceId`, else `tunnelId`, else
/// `networkId`; exactly one may be set.
pub(crate) fn read_target(
    context: binding_context::Reader<'_>,
    binding: &str,
) -> Result<BindingTarget, ProxyError> {
    let config_error =
        |details: String| ProxyError::new(ErrorCode::ProxyConfigurationError).with_details(details);
    let service_id = text("context.serviceId", context.get_service_id())?;
    let tunnel_id = text("context.tunnelId", context.get_tunnel_id())?;
    let network_id = text("context.networkId", context.get_network_id())?;
    let set = [service_id, tunnel_id, network_id]
        .iter()
        .filter(|v| !v.is_empty())
        .count();
    if set > 1 {
        return Err(config_error(format!(
            "binding {binding:?} names more than one of a service id ({service_id:?}), a \
             tunnel id ({tunnel_id:?}) and a network id ({network_id:?}); it must name one"
        )));
    }
    if !service_id.is_empty() {
        let id = Uuid::parse_str(service_id).map_err(|_| {
            config_error(format!(
                "binding {binding:?} points at service id {service_id:?}, which is not a UUID"
            ))
        })?;
        return Ok(BindingTarget::Service(id));
    }
    if !tunnel_id.is_empty() {
        let id = Uuid::parse_str(tunnel_id).map_err(|_| {
            config_error(format!(
                "binding {binding:?} points at tunnel id {tunnel_id:?}, which is not a UUID"
            ))
        })?;
        return Ok(BindingTarget::Network(NetworkTarget::Tunnel(id)));
    }
    if !network_id.is_empty() {
        return NetworkTarget::parse_network_id(network_id)
            .map(BindingTarget::Network)
            .map_err(|e| config_error(format!("binding {binding:?}: {e}")));
    }
    Err(config_error(format!(
        "binding {binding:?} names neither a service id nor a tunnel or network id"
    )))
}

/// One validated `connect`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectRequest {
    pub(crate) target: BindingTarget,
    /// The destination of a network binding: host (an IPv6 literal without brackets) and
    /// port; `None` for a service (iris dials its `tcp_port`).
    pub(crate) destination: Option<(String, u16)>,
    pub(crate) caller: Caller,
}

/// Reads and validates a `connect` call's context and address.
pub(crate) fn read_connect(
    context: binding_context::Reader<'_>,
    address: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<ConnectRequest, ProxyError> {
    let caller = Caller {
        request_id: text("context.requestId", context.get_request_id())?.to_owned(),
        account: text("context.account", context.get_account())?.to_owned(),
        script: text("context.script", context.get_script())?.to_owned(),
        binding: text("context.binding", context.get_binding())?.to_owned(),
        trace_parent: text("context.traceParent", context.get_trace_parent())?.to_owned(),
    };
    let target = read_target(context, &caller.binding)?;
    let address = text("address", address)?.trim();
    let destination = match target {
        BindingTarget::Service(id) => {
            if !address.is_empty() {
                return Err(request_error(format!(
                    "binding {:?} is a VPC service binding: connect() reaches service {id}'s \
                     tcp_port, so the address must be empty, not {address:?}",
                    caller.binding
                )));
            }
            None
        }
        BindingTarget::Network(_) => Some(read_address(address)?),
    };
    Ok(ConnectRequest {
        target,
        destination,
        caller,
    })
}

/// A `connect` address: `host:port`, `[v6]:port`; the port is required and not 0.
/// Anything else is `destination_not_found` (as the runtime refuses it).
pub(crate) fn read_address(address: &str) -> Result<(String, u16), ProxyError> {
    let bad = |why: &str| {
        ProxyError::new(ErrorCode::DestinationNotFound).with_details(format!(
            "connect() address {address:?} {why}: use host:port, or [ipv6]:port"
        ))
    };
    if address.contains(['@', '/', '?', '#']) {
        return Err(bad("is not a host and port"));
    }
    let authority: http::uri::Authority = address.parse().map_err(|_| bad("is not valid"))?;
    let port = authority.port_u16().ok_or_else(|| bad("has no port"))?;
    if port == 0 {
        return Err(bad("has port 0"));
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok((host.to_ascii_lowercase(), port))
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

/// Splits an absolute URL into scheme, host (without port), port (the scheme's when none is
/// given) and path+query. The fragment is never sent.
fn read_url(url: &str) -> Result<(Scheme, String, u16, PathAndQuery), ProxyError> {
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
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    Ok((scheme, host, port, path_and_query))
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
            .map(|(s, h, _, pq)| (s, h, pq.to_string()))
            .map_err(|e| e.code)
    }

    #[test]
    fn the_url_port_defaults_to_the_schemes() {
        let port = |u: &str| read_url(u).unwrap().2;
        assert_eq!(port("http://10.0.0.5/"), 80);
        assert_eq!(port("https://db.internal/"), 443);
        assert_eq!(port("http://[fd00::5]:8080/"), 8080);
    }

    #[test]
    fn connect_addresses_are_host_and_port() {
        assert_eq!(
            read_address("DB.internal:5432"),
            Ok(("db.internal".to_owned(), 5432))
        );
        assert_eq!(read_address("[fd00::5]:22"), Ok(("fd00::5".to_owned(), 22)));
        assert_eq!(read_address("10.0.0.1:1"), Ok(("10.0.0.1".to_owned(), 1)));
        for bad in [
            "",
            "db.internal",
            "db.internal:0",
            "db.internal:99999",
            "user@db.internal:5432",
            "fd00::5:22",
            "http://db.internal:80",
            ":80",
        ] {
            let err = read_address(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::DestinationNotFound, "{bad}");
            assert!(err.details.unwrap().contains("host:port"), "{bad}");
        }
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

//! [`Mock`]: a builder of what one binding's traffic meets instead of the tunnel (canned
//! responses, an upstream, DNS names, faults), the code form of a binding in
//! `wvpc.mock.jsonc`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use wvpc_iris::dev_mock::{BindingMock, CannedResponse, Fault, FaultCode};

/// What one binding meets. Canned responses answer first (first match wins); a request no
/// canned response matches goes to the [`upstream`](Mock::upstream), or is answered `501`
/// with a body naming the binding, method and path.
#[derive(Debug, Clone, Default)]
pub struct Mock {
    pub(crate) spec: BindingMock,
    /// A [`Mock::header`] call with no response before it (reported by `start`).
    pub(crate) stray_header: Option<String>,
}

impl Mock {
    /// A mock that answers nothing yet (`501` to every request).
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `GET` requests whose path matches `path` (`*` matches any run of characters).
    #[must_use]
    pub fn get(self, path: &str, status: u16, body: impl Into<Bytes>) -> Self {
        self.respond(Some("GET"), path, status, body)
    }

    /// Answers `POST` requests whose path matches `path`.
    #[must_use]
    pub fn post(self, path: &str, status: u16, body: impl Into<Bytes>) -> Self {
        self.respond(Some("POST"), path, status, body)
    }

    /// Answers requests of any method whose path matches `path`.
    #[must_use]
    pub fn any(self, path: &str, status: u16, body: impl Into<Bytes>) -> Self {
        self.respond(None, path, status, body)
    }

    /// Answers `method` (any when `None`) on `path`.
    #[must_use]
    pub fn respond(
        mut self,
        method: Option<&str>,
        path: &str,
        status: u16,
        body: impl Into<Bytes>,
    ) -> Self {
        self.spec.responses.push(CannedResponse {
            method: method.map(str::to_owned),
            path: path.to_owned(),
            status,
            headers: Vec::new(),
            body: body.into(),
        });
        self
    }

    /// Adds a header to the response added last (`get`, `post`, `any`, `respond`).
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match self.spec.responses.last_mut() {
            Some(response) => response.headers.push((name.to_owned(), value.to_owned())),
            None => self.stray_header = Some(name.to_owned()),
        }
        self
    }

    /// Sends requests that no canned response answers to a local server.
    #[must_use]
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.spec.upstream = Some(addr);
        self
    }

    /// The service's hostname, resolved through the mock's DNS (default `<binding>.mock`,
    /// resolving to 127.0.0.1). The `Host` the service sees is still the script's URL's.
    #[must_use]
    pub fn host(mut self, name: &str) -> Self {
        self.spec.host = Some(name.to_owned());
        self
    }

    /// `name` resolves to `ips` through the tunnel.
    #[must_use]
    pub fn dns(mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.spec
            .dns
            .insert(name.to_ascii_lowercase(), ips.into_iter().collect());
        self
    }

    /// Adds a fault rule: a code for every request ([`crate::Fault`]) or a scoped, partial
    /// one ([`crate::FaultRule`]). The first rule that hits wins.
    #[must_use]
    pub fn fault(mut self, fault: impl IntoFaultRule) -> Self {
        self.spec.faults.push(fault.into_fault_rule());
        self
    }

    /// Delays every answer (and every failure) of the binding by `latency`.
    #[must_use]
    pub fn latency(self, latency: Duration) -> Self {
        self.fault(Fault::latency(latency))
    }
}

/// A fault rule, or a fault code meaning "this code for every request".
pub trait IntoFaultRule {
    /// The rule.
    fn into_fault_rule(self) -> Fault;
}

impl IntoFaultRule for Fault {
    fn into_fault_rule(self) -> Fault {
        self
    }
}

impl IntoFaultRule for FaultCode {
    fn into_fault_rule(self) -> Fault {
        Fault::new(self)
    }
}

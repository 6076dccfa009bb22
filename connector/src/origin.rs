//! Reaching origins inside the private network: where a flow really goes (the virtual DNS
//! address is redirected to a resolver), TCP dialing with a timeout and error codes, and the
//! flow limit shared by TCP flows and UDP sessions.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::IndexedRandom as _;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_tunnel::VIRTUAL_DNS_RESOLVER;

/// Where flows go.
#[derive(Debug, Clone)]
pub(crate) struct OriginRoutes {
    /// `--dns-resolver-addrs`; one is picked at random per flow.
    resolvers: Vec<SocketAddr>,
    /// Used when no resolver is configured.
    host_resolver: SocketAddr,
}

impl OriginRoutes {
    pub(crate) fn new(resolvers: Vec<SocketAddr>, host_resolver: SocketAddr) -> Self {
        Self {
            resolvers,
            host_resolver,
        }
    }

    /// The address a flow to `dest` is sent to.
    pub(crate) fn target(&self, dest: SocketAddr) -> SocketAddr {
        if dest != VIRTUAL_DNS_RESOLVER {
            return dest;
        }
        self.resolvers
            .choose(&mut rand::rng())
            .copied()
            .unwrap_or(self.host_resolver)
    }
}

/// The flow limit (`max_active_flows`), shared by TCP flows and UDP sessions.
#[derive(Debug, Clone)]
pub(crate) struct FlowLimiter(Option<Arc<Semaphore>>);

/// A held flow slot; released on drop.
pub(crate) struct FlowSlot(
    #[expect(dead_code, reason = "held for its Drop")] Option<OwnedSemaphorePermit>,
);

impl FlowLimiter {
    pub(crate) fn new(max: usize) -> Self {
        Self((max > 0).then(|| Arc::new(Semaphore::new(max))))
    }

    /// A slot, or `rate_limited` when the limit is reached.
    pub(crate) fn acquire(&self) -> Result<FlowSlot, ProxyError> {
        match &self.0 {
            None => Ok(FlowSlot(None)),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| FlowSlot(Some(p)))
                .map_err(|_| {
                    ProxyError::new(ErrorCode::RateLimited)
                        .with_details("too many active flows on this connector (max_active_flows)")
                }),
        }
    }
}

/// Dials `target` over TCP with `timeout`; TCP_NODELAY on success.
pub(crate) async fn dial_tcp(
    target: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%target, error = %e, "could not set TCP_NODELAY on origin socket");
            }
            Ok(stream)
        }
        Ok(Err(e)) => {
            Err(ProxyError::new(classify_io(&e)).with_details(format!("dial tcp {target}: {e}")))
        }
        Err(_) => Err(
            ProxyError::new(ErrorCode::ConnectionTimeout).with_details(format!(
                "dial tcp {target}: no answer within {}s",
                timeout.as_secs_f32()
            )),
        ),
    }
}

/// The code for a socket error while reaching an origin.
pub(crate) fn classify_io(e: &io::Error) -> ErrorCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
        io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => ErrorCode::DestinationIpUnroutable,
        io::ErrorKind::PermissionDenied => ErrorCode::DestinationIpProhibited,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ErrorCode::ConnectionTerminated
        }
        _ => ErrorCode::DestinationUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_resolver_goes_to_a_configured_resolver_or_the_host() {
        let host: SocketAddr = "10.0.0.2:53".parse().unwrap();
        let a: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5354".parse().unwrap();
        let routes = OriginRoutes::new(vec![a, b], host);
        for _ in 0..20 {
            assert!([a, b].contains(&routes.target(VIRTUAL_DNS_RESOLVER)));
        }
        let other: SocketAddr = "10.1.1.1:53".parse().unwrap();
        assert_eq!(routes.target(other), other);
        assert_eq!(
            OriginRoutes::new(vec![], host).target(VIRTUAL_DNS_RESOLVER),
            host
        );
    }

    #[test]
    fn flow_limit_refuses_with_rate_limited_and_frees_on_drop() {
        let limiter = FlowLimiter::new(1);
        let slot = limiter.acquire().unwrap();
        assert_eq!(
            limiter.acquire().err().unwrap().code,
            ErrorCode::RateLimited
        );
        drop(slot);
        assert!(limiter.acquire().is_ok());
        assert!(FlowLimiter::new(0).acquire().is_ok());
    }

    #[tokio::test]
    async fn refused_dial_is_connection_refused() {
        // Bind then drop a listener: its port now refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = dial_tcp(port, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::ConnectionRefused);
        assert!(err.details.unwrap().contains(&port.to_string()));
    }
}

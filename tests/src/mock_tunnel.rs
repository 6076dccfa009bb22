//! `MockTunnel`: an in-process [`TunnelPool`] for tests that do not need the QUIC tunnel.
//!
//! TCP flows dial the destination directly (tests only use loopback addresses); UDP flows
//! answer DNS queries from a [`DnsTable`] without any socket. Switches inject the faults a
//! real tunnel can produce, so router and binding tests can reach every error code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_iris::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};

use crate::dns::DnsTable;

/// A fault the mock tunnel injects into every new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockFault {
    /// No live connector: every flow fails with `destination_unavailable`.
    NoConnector,
    /// The connector's flow limiter refuses: `rate_limited`.
    FlowLimit,
}

/// The mock tunnel. Cheap to clone; clones share switches and counters.
#[derive(Clone, Default)]
pub struct MockTunnel {
    dns: DnsTable,
    fault: Arc<Mutex<Option<MockFault>>>,
    tcp_flows: Arc<AtomicUsize>,
    udp_flows: Arc<AtomicUsize>,
}

impl MockTunnel {
    /// A mock tunnel answering DNS from `dns`.
    pub fn new(dns: DnsTable) -> Self {
        Self {
            dns,
            ..Self::default()
        }
    }

    /// Sets (or clears) the injected fault.
    pub fn set_fault(&self, fault: Option<MockFault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// TCP flows opened so far (successful or not).
    pub fn tcp_flows(&self) -> usize {
        self.tcp_flows.load(Ordering::SeqCst)
    }

    /// UDP flows opened so far.
    pub fn udp_flows(&self) -> usize {
        self.udp_flows.load(Ordering::SeqCst)
    }

    fn check_fault(&self) -> Result<(), ProxyError> {
        match *self.fault.lock().unwrap() {
            None => Ok(()),
            Some(MockFault::NoConnector) => Err(ProxyError::new(ErrorCode::DestinationUnavailable)
                .with_details("mock tunnel: no live connector")),
            Some(MockFault::FlowLimit) => Err(ProxyError::new(ErrorCode::RateLimited)),
        }
    }
}

impl TunnelPool for MockTunnel {
    fn open_tcp<'a>(
        &'a self,
        _tunnel: Uuid,
        dest: SocketAddr,
        _ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<BoxIo, ProxyError>> {
        Box::pin(async move {
            self.tcp_flows.fetch_add(1, Ordering::SeqCst);
            self.check_fault()?;
            let stream = TcpStream::connect(dest).await.map_err(|e| {
                let code = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
                    _ => ErrorCode::DestinationIpUnroutable,
                };
                ProxyError::new(code).with_details(format!("mock tunnel: dial {dest}: {e}"))
            })?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn open_udp<'a>(
        &'a self,
        _tunnel: Uuid,
        _dest: SocketAddr,
        _ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>> {
        Box::pin(async move {
            self.udp_flows.fetch_add(1, Ordering::SeqCst);
            self.check_fault()?;
            let (tx, rx) = mpsc::unbounded_channel();
            Ok(Box::new(MockDnsFlow {
                dns: self.dns.clone(),
                tx,
                rx: AsyncMutex::new(rx),
            }) as Box<dyn UdpFlow>)
        })
    }
}

/// A UDP flow whose far end is the DNS table.
struct MockDnsFlow {
    dns: DnsTable,
    tx: mpsc::UnboundedSender<Bytes>,
    rx: AsyncMutex<mpsc::UnboundedReceiver<Bytes>>,
}

impl UdpFlow for MockDnsFlow {
    fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move {
            if let Some(answer) = self.dns.answer(&payload) {
                let _ = self.tx.send(Bytes::from(answer));
            }
            Ok(())
        })
    }

    fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>> {
        Box::pin(async move {
            // The sender lives in `self`, so this only ends when the table stays silent.
            self.rx
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| ProxyError::new(ErrorCode::ConnectionTerminated))
        })
    }
}

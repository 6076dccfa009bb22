//! Test doubles for iris's two seams (cargo feature `mock`; never in a production build).
//!
//! - [`MemoryStore`]: services (and the accounts' networks of `vpc_networks` bindings) kept
//!   in memory, changed while a test runs.
//! - [`MockTunnel`]: a [`TunnelPool`] without QUIC: TCP flows dial the destination directly
//!   (tests use loopback addresses only), UDP flows hand each datagram to a DNS answerer
//!   function, and a switch injects the faults a real tunnel produces. It records every TCP
//!   destination it was asked for, and through which tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, mpsc};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};

use crate::routes::{NetworkReach, NetworkTarget, ServiceRoute, ServiceStore};
use crate::tunnel_pool::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};

// === MemoryStore ===

/// Services and networks in memory. Cheap to clone; clones share the tables.
#[derive(Clone, Default)]
pub struct MemoryStore {
    routes: Arc<RwLock<HashMap<Uuid, ServiceRoute>>>,
    networks: Arc<RwLock<HashMap<(String, NetworkTarget), NetworkReach>>>,
}

impl MemoryStore {
    /// Adds or replaces what `account`'s `target` reaches.
    pub fn put_network(&self, account: &str, target: NetworkTarget, reach: NetworkReach) {
        self.networks
            .write()
            .unwrap()
            .insert((account.to_owned(), target), reach);
    }

    /// Deletes `account`'s `target`.
    pub fn delete_network(&self, account: &str, target: NetworkTarget) {
        self.networks
            .write()
            .unwrap()
            .remove(&(account.to_owned(), target));
    }

    /// Adds or replaces a service.
    pub fn put(&self, route: ServiceRoute) {
        self.routes.write().unwrap().insert(route.service_id, route);
    }

    /// Deletes a service.
    pub fn delete(&self, service_id: Uuid) {
        self.routes.write().unwrap().remove(&service_id);
    }
}

impl FromIterator<ServiceRoute> for MemoryStore {
    fn from_iter<I: IntoIterator<Item = ServiceRoute>>(routes: I) -> Self {
        let store = MemoryStore::default();
        routes.into_iter().for_each(|route| store.put(route));
        store
    }
}

impl ServiceStore for MemoryStore {
    fn route(&self, service_id: Uuid) -> Result<Option<ServiceRoute>, ProxyError> {
        Ok(self.routes.read().unwrap().get(&service_id).cloned())
    }

    fn network(
        &self,
        account: &str,
        target: &NetworkTarget,
    ) -> Result<Option<NetworkReach>, ProxyError> {
        Ok(self
            .networks
            .read()
            .unwrap()
            .get(&(account.to_owned(), *target))
            .cloned())
    }
}

// === MockTunnel ===

/// A fault the mock tunnel injects into every new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockFault {
    /// No live connector: every flow fails with `destination_unavailable`.
    NoConnector,
    /// The connector's flow limiter refuses: `rate_limited`.
    FlowLimit,
}

/// Answers one DNS query in wire format; `None` stays silent (the resolver times out).
pub type DnsAnswerer = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// The mock tunnel. Cheap to clone; clones share switches and records.
#[derive(Clone)]
pub struct MockTunnel {
    dns: DnsAnswerer,
    fault: Arc<Mutex<Option<MockFault>>>,
    dialed: Arc<Mutex<Vec<(Uuid, SocketAddr)>>>,
    udp_flows: Arc<Mutex<Vec<Uuid>>>,
}

impl Default for MockTunnel {
    /// A tunnel whose DNS never answers.
    fn default() -> Self {
        Self::new(Arc::new(|_| None))
    }
}

impl MockTunnel {
    /// A mock tunnel answering DNS with `dns`.
    pub fn new(dns: DnsAnswerer) -> Self {
        Self {
            dns,
            fault: Arc::default(),
            dialed: Arc::default(),
            udp_flows: Arc::default(),
        }
    }

    /// Sets (or clears) the injected fault.
    pub fn set_fault(&self, fault: Option<MockFault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Every TCP destination asked for so far (whether the dial worked or not).
    pub fn dialed(&self) -> Vec<SocketAddr> {
        self.dialed
            .lock()
            .unwrap()
            .iter()
            .map(|(_, d)| *d)
            .collect()
    }

    /// Every TCP destination asked for so far, with the tunnel asked to carry it.
    pub fn dialed_via(&self) -> Vec<(Uuid, SocketAddr)> {
        self.dialed.lock().unwrap().clone()
    }

    /// UDP flows opened so far.
    pub fn udp_flows(&self) -> usize {
        self.udp_flows.lock().unwrap().len()
    }

    /// The tunnel of each UDP flow opened so far (DNS goes through these).
    pub fn udp_flow_tunnels(&self) -> Vec<Uuid> {
        self.udp_flows.lock().unwrap().clone()
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
    fn has_usable_connection(&self, _tunnel: Uuid) -> bool {
        *self.fault.lock().unwrap() != Some(MockFault::NoConnector)
    }

    fn open_tcp<'a>(
        &'a self,
        tunnel: Uuid,
        dest: SocketAddr,
        _ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<BoxIo, ProxyError>> {
        Box::pin(async move {
            self.dialed.lock().unwrap().push((tunnel, dest));
            self.check_fault()?;
            let stream = TcpStream::connect(dest).await.map_err(|e| {
                let code = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
                    _ => ErrorCode::DestinationIpUnroutable,
                };
                ProxyError::new(code).with_details(format!("mock tunnel: dial {dest}: {e}"))
            })?;
            stream.set_nodelay(true).map_err(|e| {
                ProxyError::new(ErrorCode::ProxyInternalError).with_details(e.to_string())
            })?;
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn open_udp<'a>(
        &'a self,
        tunnel: Uuid,
        _dest: SocketAddr,
        _ctx: &'a FlowContext,
    ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>> {
        Box::pin(async move {
            self.udp_flows.lock().unwrap().push(tunnel);
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

/// A UDP flow whose far end is the DNS answerer.
struct MockDnsFlow {
    dns: DnsAnswerer,
    tx: mpsc::UnboundedSender<Bytes>,
    rx: AsyncMutex<mpsc::UnboundedReceiver<Bytes>>,
}

impl UdpFlow for MockDnsFlow {
    fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
        Box::pin(async move {
            if let Some(answer) = (self.dns)(&payload) {
                let _ = self.tx.send(Bytes::from(answer));
            }
            Ok(())
        })
    }

    fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>> {
        Box::pin(async move {
            // The sender lives in `self`, so this only pends when the answerer stays silent.
            self.rx
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| ProxyError::new(ErrorCode::ConnectionTerminated))
        })
    }
}

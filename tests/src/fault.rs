//! Fault injection (test doubles, named so).
//!
//! - [`UdpRelay`] forwards datagrams between connectors and the edge until [`UdpRelay::cut`],
//!   after which it drops everything both ways. To the edge, a cut connector looks exactly like
//!   one killed with `kill -9` or lost behind a network partition: it goes silent without a
//!   close frame.
//! - [`TcpPartition`] forwards TCP connections to a server (PostgreSQL, say) and can be
//!   partitioned and healed: while partitioned nothing moves either way and nothing is closed,
//!   as behind a link that silently drops; after healing the held bytes flow again, as TCP's
//!   retransmissions would deliver them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// A UDP relay in front of an edge.
pub struct UdpRelay {
    /// Where connectors dial (instead of the edge).
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// Relays `127.0.0.1:<new port>` ⇄ `edge`.
    pub async fn start(edge: SocketAddr) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(relay(front, edge, cut.clone()));
        Ok(UdpRelay { addr, cut, task })
    }

    /// From now on every datagram is dropped, in both directions.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(front: Arc<UdpSocket>, edge: SocketAddr, cut: Arc<AtomicBool>) {
    // One upstream socket per connector socket, so the edge sees distinct peers.
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut backs = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, peer)) = front.recv_from(&mut buf).await else {
            return;
        };
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let socket = match upstream.get(&peer) {
            Some(socket) => socket.clone(),
            None => {
                let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if socket.connect(edge).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                upstream.insert(peer, socket.clone());
                let (back, front, cut) = (socket.clone(), front.clone(), cut.clone());
                backs.spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = back.recv(&mut buf).await {
                        if !cut.load(Ordering::SeqCst) {
                            let _ = front.send_to(&buf[..n], peer).await;
                        }
                    }
                });
                socket
            }
        };
        let _ = socket.send(&buf[..n]).await;
    }
}

/// A TCP forwarder in front of a server that a test can partition and heal.
pub struct TcpPartition {
    /// Where clients dial (instead of the server).
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpPartition {
    /// Forwards `127.0.0.1:<new port>` → `server`, open.
    pub async fn start(server: SocketAddr) -> std::io::Result<TcpPartition> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, gate) = watch::channel(true);
        let task = tokio::spawn(forward(listener, server, gate));
        Ok(TcpPartition { addr, open, task })
    }

    /// From now on no byte moves, on the connections open and on new ones (which are accepted
    /// by the kernel, as a listen backlog would, and then hear nothing).
    pub fn partition(&self) {
        self.open.send_replace(false);
    }

    /// Bytes flow again, those held first.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpPartition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the link is partitioned.
async fn passable(gate: &mut watch::Receiver<bool>) -> bool {
    gate.wait_for(|open| *open).await.is_ok()
}

async fn forward(listener: TcpListener, server: SocketAddr, gate: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let mut gate = gate.clone();
        connections.spawn(async move {
            if !passable(&mut gate).await {
                return;
            }
            let Ok(upstream) = TcpStream::connect(server).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = upstream.into_split();
            tokio::join!(
                pipe(client_read, server_write, gate.clone()),
                pipe(server_read, client_write, gate),
            );
        });
    }
}

/// Copies one direction, each chunk waiting for the link to be open before it is written.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !passable(&mut gate).await || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // The other side learns of the close only once the link is open.
    if passable(&mut gate).await {
        let _ = to.shutdown().await;
    }
}

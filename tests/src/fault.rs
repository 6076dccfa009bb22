//! Fault injection on the tunnel's UDP path (a test double, named so): [`UdpRelay`] forwards
//! datagrams between connectors and the edge until [`UdpRelay::cut`], after which it drops
//! everything both ways. To the edge, a cut connector looks exactly like one killed with
//! `kill -9` or lost behind a network partition: it goes silent without a close frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;

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

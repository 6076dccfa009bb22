//! A real DNS server for tests: UDP and TCP (length-prefixed, RFC 1035 §4.2.2) on one port of
//! 127.0.0.1, answering A and AAAA from a table, NXDOMAIN for unknown names, and switchable
//! faults (SERVFAIL, silence, UDP answers truncated). It counts the queries it receives, per
//! transport, so tests can assert caching and the TCP retry.
//!
//! [`DnsTable::answer`] is also what the mock tunnel uses to answer DNS without a socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsMode {
    /// Answer from the table (NXDOMAIN for unknown names).
    #[default]
    Answer,
    /// Answer SERVFAIL to everything.
    ServFail,
    /// Never answer (the resolver times out).
    Silent,
    /// Over UDP, answer with the TC bit and no records (as a server whose answer does not fit
    /// does); over TCP, answer from the table.
    TruncateUdp,
}

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A TCP stream.
    Tcp,
}

/// Names and addresses, shared between the server task and the test.
#[derive(Debug, Clone, Default)]
pub struct DnsTable {
    inner: Arc<Mutex<TableInner>>,
}

#[derive(Debug, Default)]
struct TableInner {
    records: HashMap<String, Vec<IpAddr>>,
    ttl: u32,
    mode: DnsMode,
    queries: HashMap<(String, RecordType), usize>,
    tcp_queries: HashMap<(String, RecordType), usize>,
}

impl DnsTable {
    /// An empty table with a 60 s TTL.
    pub fn new() -> Self {
        let t = Self::default();
        t.inner.lock().unwrap().ttl = 60;
        t
    }

    /// Adds an address for a name (without the trailing dot).
    #[must_use]
    pub fn with(self, name: &str, ip: IpAddr) -> Self {
        self.insert(name, ip);
        self
    }

    /// Adds an address for a name.
    pub fn insert(&self, name: &str, ip: IpAddr) {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.inner
            .lock()
            .unwrap()
            .records
            .entry(key)
            .or_default()
            .push(ip);
    }

    /// Sets the TTL of every answer.
    pub fn set_ttl(&self, ttl: u32) {
        self.inner.lock().unwrap().ttl = ttl;
    }

    /// Switches the fault mode.
    pub fn set_mode(&self, mode: DnsMode) {
        self.inner.lock().unwrap().mode = mode;
    }

    /// How many queries of `rtype` for `name` arrived (both transports).
    pub fn query_count(&self, name: &str, rtype: RecordType) -> usize {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), rtype);
        self.inner
            .lock()
            .unwrap()
            .queries
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// How many queries of `rtype` for `name` arrived over TCP.
    pub fn tcp_query_count(&self, name: &str, rtype: RecordType) -> usize {
        let key = (name.trim_end_matches('.').to_ascii_lowercase(), rtype);
        self.inner
            .lock()
            .unwrap()
            .tcp_queries
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Answers one wire-format query as if it came over UDP; `None` means stay silent.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.answer_over(Transport::Udp, query)
    }

    /// Answers one wire-format query that came over `transport`.
    pub fn answer_over(&self, transport: Transport, query: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut inner = self.inner.lock().unwrap();
        for q in &msg.queries {
            let name = q
                .name()
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if transport == Transport::Tcp {
                *inner
                    .tcp_queries
                    .entry((name.clone(), q.query_type()))
                    .or_default() += 1;
            }
            *inner.queries.entry((name, q.query_type())).or_default() += 1;
        }
        let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
        resp.metadata.recursion_desired = msg.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(msg.queries.iter().cloned());
        match inner.mode {
            DnsMode::Silent => return None,
            DnsMode::ServFail => resp.metadata.response_code = ResponseCode::ServFail,
            DnsMode::TruncateUdp if transport == Transport::Udp => resp.metadata.truncation = true,
            DnsMode::Answer | DnsMode::TruncateUdp => {
                for q in &msg.queries {
                    let name = q
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    let Some(ips) = inner.records.get(&name) else {
                        resp.metadata.response_code = ResponseCode::NXDomain;
                        continue;
                    };
                    for ip in ips {
                        let rdata = match (ip, q.query_type()) {
                            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                            _ => continue,
                        };
                        resp.add_answer(Record::from_rdata(q.name().clone(), inner.ttl, rdata));
                    }
                }
            }
        }
        resp.to_vec().ok()
    }
}

/// A running DNS server.
pub struct DnsServer {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// Its table, counters and fault switch.
    pub table: DnsTable,
    task: tokio::task::JoinHandle<()>,
    tcp_task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Starts a server on `127.0.0.1:0` answering from `table`.
    pub async fn start(table: DnsTable) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().unwrap(), table).await
    }

    /// Starts a server on a given address (with port 0: a port free for both UDP and TCP).
    pub async fn start_on(addr: SocketAddr, table: DnsTable) -> std::io::Result<Self> {
        let mut attempts = 0;
        let (socket, listener) = loop {
            let socket = UdpSocket::bind(addr).await?;
            match TcpListener::bind(socket.local_addr()?).await {
                Ok(listener) => break (socket, listener),
                // The UDP port's TCP twin is taken: another free port.
                Err(err) if addr.port() == 0 && attempts < 20 => {
                    attempts += 1;
                    tracing::debug!(error = %err, "DNS test server: TCP port taken, retrying");
                }
                Err(err) => return Err(err),
            }
        };
        let addr = socket.local_addr()?;
        let tcp_task = tokio::spawn(serve_tcp(listener, table.clone()));
        let served = table.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if let Some(answer) = served.answer(&buf[..n]) {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        Ok(Self {
            addr,
            table,
            task,
            tcp_task,
        })
    }
}

/// DNS over TCP: each connection carries length-prefixed queries, answered in order.
async fn serve_tcp(listener: TcpListener, table: DnsTable) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        connections.spawn(answer_tcp(stream, table.clone()));
    }
}

async fn answer_tcp(mut stream: TcpStream, table: DnsTable) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(answer) = table.answer_over(Transport::Tcp, &query) else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
        self.tcp_task.abort();
    }
}

/// Builds a query for tests that speak DNS directly.
pub fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(hickory_proto::op::Query::query(
        Name::from_str(&format!("{}.", name.trim_end_matches('.'))).unwrap(),
        rtype,
    ));
    msg.to_vec().unwrap()
}

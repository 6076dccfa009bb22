//! A real DNS server for tests: UDP on 127.0.0.1:0, answering A and AAAA from a table,
//! NXDOMAIN for unknown names, and switchable faults (SERVFAIL, silence). It counts the
//! queries it receives so tests can assert caching.
//!
//! [`DnsTable::answer`] is also what the mock tunnel uses to answer DNS without a socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

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

    /// How many queries of `rtype` for `name` arrived.
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

    /// Answers one wire-format query; `None` means stay silent.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
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
            *inner.queries.entry((name, q.query_type())).or_default() += 1;
        }
        let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
        resp.metadata.recursion_desired = msg.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_queries(msg.queries.iter().cloned());
        match inner.mode {
            DnsMode::Silent => return None,
            DnsMode::ServFail => resp.metadata.response_code = ResponseCode::ServFail,
            DnsMode::Answer => {
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
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    /// Its table, counters and fault switch.
    pub table: DnsTable,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Starts a server on `127.0.0.1:0` answering from `table`.
    pub async fn start(table: DnsTable) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().unwrap(), table).await
    }

    /// Starts a server on a given address.
    pub async fn start_on(addr: SocketAddr, table: DnsTable) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        let served = table.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                if let Some(answer) = served.answer(&buf[..n]) {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        Ok(Self { addr, table, task })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
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

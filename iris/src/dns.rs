//! DNS for services that name a hostname, resolved *inside the private network*: A and AAAA
//! queries travel as UDP datagrams through the service's tunnel to the route's resolvers, or to
//! the connector's virtual resolver ([`VIRTUAL_RESOLVER`]) when the route names none.
//!
//! Policy (the product leaves it open; this is ours):
//! - one UDP flow per resolver carries both queries (one question per message, as real
//!   servers require); answers are matched by id *and* question, anything else is ignored;
//! - an answer with the TC bit (too big for UDP) is asked again over TCP through the tunnel
//!   (one stream to the same resolver, length-prefixed messages, RFC 7766), so that every
//!   record comes back;
//! - each resolver gets [`DnsConfig::attempts`] tries of [`DnsConfig::attempt_timeout`];
//!   resolvers are tried in order, and only upstream failures (timeout, SERVFAIL, REFUSED, a
//!   dead flow) move on to the next one — NXDOMAIN is an answer;
//! - addresses come back IPv4 first, then IPv6;
//! - positive answers are cached for the smallest TTL of the records used (clamped to
//!   [`DnsConfig::min_ttl`]..=[`DnsConfig::max_ttl`]), NXDOMAIN and NODATA for the SOA
//!   minimum (or [`DnsConfig::negative_ttl`] without a SOA, capped by
//!   [`DnsConfig::max_negative_ttl`]); failures are not cached;
//! - concurrent lookups of one (tunnel, resolvers, name) share a single query.
//!
//! Errors are codes: NXDOMAIN → `dns_error` with rcode `NXDOMAIN` (the client's fault),
//! SERVFAIL/REFUSED/… → `dns_error` with that rcode, no A/AAAA → `dns_error` with rcode
//! `NODATA`, malformed answers → `dns_error`, no answer in time → `dns_timeout`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Shared;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};

use crate::tunnel_pool::{BoxFuture, BoxIo, FlowContext, TunnelPool, UdpFlow};

/// The connector's virtual DNS service: the connector forwards what it receives there to its
/// host's system resolver (cloudflared's reserved address).
pub const VIRTUAL_RESOLVER: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2606, 0x4700, 0xcf1, 0x2000, 0, 0, 0, 1)),
    53,
);

/// Longest CNAME chain followed inside one answer.
const MAX_CNAME_HOPS: usize = 8;

/// EDNS payload size advertised in queries (the DNS-flag-day value, safe through tunnels).
const EDNS_PAYLOAD: u16 = 1232;

/// Tuning of [`DnsResolver`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DnsConfig {
    /// How long one try waits for the answers to both queries.
    pub attempt_timeout: Duration,
    /// Tries per resolver (the first one plus retries). At least 1.
    pub attempts: u32,
    /// Shortest time a positive answer is cached (TTL 0 answers are cached this long).
    pub min_ttl: Duration,
    /// Longest time a positive answer is cached, whatever its TTL.
    pub max_ttl: Duration,
    /// How long NXDOMAIN / NODATA is cached when the answer carries no SOA.
    pub negative_ttl: Duration,
    /// Longest time NXDOMAIN / NODATA is cached, whatever the SOA says.
    pub max_negative_ttl: Duration,
    /// Entries kept before expired ones are swept (and, if still full, some are dropped).
    pub max_cache_entries: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(2),
            attempts: 2,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            max_negative_ttl: Duration::from_secs(30),
            max_cache_entries: 10_000,
        }
    }
}

/// Resolved addresses, IPv4 first.
pub type Addresses = Arc<[IpAddr]>;

type LookupResult = Result<Addresses, ProxyError>;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsSource {
    /// The cache, still fresh.
    Cache,
    /// A lookup through the tunnel (or one already in flight), which took this long.
    Lookup(Duration),
}

/// Resolves service hostnames through tunnels, with a TTL cache and single-flight lookups.
///
/// Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct DnsResolver {
    inner: Arc<ResolverInner>,
}

struct ResolverInner {
    pool: Arc<dyn TunnelPool>,
    config: DnsConfig,
    cache: Mutex<HashMap<CacheKey, CacheEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    tunnel: Uuid,
    resolvers: Vec<SocketAddr>,
    /// Lower-case, fully qualified.
    name: String,
}

enum CacheEntry {
    Ready {
        result: LookupResult,
        expires: Instant,
    },
    InFlight(Shared<BoxFuture<'static, LookupResult>>),
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A resolver that sends its queries through `pool`.
    pub fn new(pool: Arc<dyn TunnelPool>, config: DnsConfig) -> Self {
        Self {
            inner: Arc::new(ResolverInner {
                pool,
                config,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The addresses of `name` as seen from inside `tunnel`'s network, IPv4 first.
    ///
    /// `resolvers` are the route's resolvers, tried in order; empty means the connector's
    /// virtual resolver. An IP literal resolves to itself without a query.
    pub async fn resolve(
        &self,
        tunnel: Uuid,
        resolvers: &[SocketAddr],
        name: &str,
        ctx: &FlowContext,
    ) -> LookupResult {
        self.resolve_sourced(tunnel, resolvers, name, ctx).await.0
    }

    /// [`DnsResolver::resolve`], and where the answer came from (`None`: `name` was an IP
    /// literal).
    pub async fn resolve_sourced(
        &self,
        tunnel: Uuid,
        resolvers: &[SocketAddr],
        name: &str,
        ctx: &FlowContext,
    ) -> (LookupResult, Option<DnsSource>) {
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return (Ok(Arc::from([ip])), None);
        }
        let fqdn = match parse_name(name) {
            Ok(fqdn) => fqdn,
            Err(err) => return (Err(err), None),
        };
        let key = CacheKey {
            tunnel,
            resolvers: resolvers.to_vec(),
            name: fqdn.to_lowercase().to_ascii(),
        };
        let lookup = {
            let mut cache = self
                .inner
                .cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match cache.get(&key) {
                Some(CacheEntry::Ready { result, expires }) if *expires > Instant::now() => {
                    return (result.clone(), Some(DnsSource::Cache));
                }
                Some(CacheEntry::InFlight(shared)) => shared.clone(),
                _ => {
                    let shared = self.start_lookup(key.clone(), fqdn, ctx.clone());
                    if cache.len() >= self.inner.config.max_cache_entries {
                        evict(&mut cache, self.inner.config.max_cache_entries);
                    }
                    cache.insert(key, CacheEntry::InFlight(shared.clone()));
                    shared
                }
            }
        };
        let started = Instant::now();
        let result = lookup.await;
        (result, Some(DnsSource::Lookup(started.elapsed())))
    }

    /// Runs the lookup as its own task, so that it completes (and fills the cache) even when
    /// the request that started it goes away; every waiter shares its result.
    fn start_lookup(
        &self,
        key: CacheKey,
        name: Name,
        ctx: FlowContext,
    ) -> Shared<BoxFuture<'static, LookupResult>> {
        let inner = Arc::clone(&self.inner);
        let task_key = key.clone();
        let looked_up = async move {
            let outcome = lookup(&inner, &task_key, &name, &ctx).await;
            let (result, ttl) = match outcome {
                Ok(Answer::Addresses { addrs, ttl }) => {
                    let ttl = clamp(ttl, inner.config.min_ttl, inner.config.max_ttl);
                    (Ok(Addresses::from(addrs)), Some(ttl))
                }
                Ok(Answer::Negative {
                    rcode,
                    negative_ttl,
                }) => {
                    let ttl = negative_ttl.unwrap_or(inner.config.negative_ttl);
                    let ttl = clamp(ttl, inner.config.min_ttl, inner.config.max_negative_ttl);
                    (
                        Err(ProxyError::dns(rcode).with_details(format!("{name} has {rcode}"))),
                        Some(ttl),
                    )
                }
                Err(err) => (Err(err), None),
            };
            let mut cache = inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
            match ttl {
                Some(ttl) => {
                    let expires = Instant::now() + ttl;
                    cache.insert(
                        task_key,
                        CacheEntry::Ready {
                            result: result.clone(),
                            expires,
                        },
                    );
                }
                None => {
                    cache.remove(&task_key);
                }
            }
            result
        };
        // Its flows through the tunnel belong to the span of the request that started it.
        let task = tokio::spawn(looked_up.instrument(tracing::Span::current()));
        let inner = Arc::clone(&self.inner);
        let waited: BoxFuture<'static, LookupResult> = Box::pin(async move {
            task.await.unwrap_or_else(|join_error| {
                inner
                    .cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
                Err(ProxyError::new(ErrorCode::ProxyInternalError)
                    .with_details(format!("DNS lookup task failed: {join_error}")))
            })
        });
        waited.shared()
    }
}

/// Drops expired entries; if the cache is still full, drops arbitrary settled ones.
fn evict(cache: &mut HashMap<CacheKey, CacheEntry>, max: usize) {
    let now = Instant::now();
    cache.retain(|_, e| !matches!(e, CacheEntry::Ready { expires, .. } if *expires <= now));
    if cache.len() >= max {
        let excess = cache.len() + 1 - max;
        let victims: Vec<CacheKey> = cache
            .iter()
            .filter(|(_, e)| matches!(e, CacheEntry::Ready { .. }))
            .map(|(k, _)| k.clone())
            .take(excess)
            .collect();
        for key in victims {
            cache.remove(&key);
        }
    }
}

fn clamp(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.max(min).min(max.max(min))
}

/// Parses a hostname into a fully qualified [`Name`].
fn parse_name(name: &str) -> Result<Name, ProxyError> {
    let invalid = |why: &str| {
        ProxyError::new(ErrorCode::DnsError).with_details(format!(
            "service hostname {name:?} is not a valid DNS name: {why}"
        ))
    };
    if name.is_empty() || name == "." {
        return Err(invalid("it is empty"));
    }
    let mut parsed = Name::from_utf8(name).map_err(|e| invalid(&e.to_string()))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// What one resolver said about a name.
#[derive(Debug)]
enum Answer {
    /// At least one address (IPv4 first); `ttl` is the smallest TTL of the records used.
    Addresses { addrs: Vec<IpAddr>, ttl: Duration },
    /// The name does not exist (`NXDOMAIN`) or has no A/AAAA records (`NODATA`).
    Negative {
        rcode: &'static str,
        negative_ttl: Option<Duration>,
    },
}

/// Tries each resolver in order; the first one that answers decides.
async fn lookup(
    inner: &ResolverInner,
    key: &CacheKey,
    name: &Name,
    ctx: &FlowContext,
) -> Result<Answer, ProxyError> {
    let servers: &[SocketAddr] = if key.resolvers.is_empty() {
        &[VIRTUAL_RESOLVER]
    } else {
        &key.resolvers
    };
    let mut last_error = None;
    for &server in servers {
        match query_resolver(inner, key.tunnel, server, name, ctx).await {
            Ok(answer) => return Ok(answer),
            Err(err) => {
                tracing::debug!(
                    request_id = %ctx.request_id, tunnel = %key.tunnel, %server, %name,
                    error = %err, "DNS resolver failed; trying the next one if any"
                );
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ProxyError::new(ErrorCode::DnsError)))
}

/// One question in flight on a flow.
struct Pending {
    id: u16,
    query: Query,
    wire: Bytes,
    outcome: Option<FamilyOutcome>,
}

/// What one resolver said about one record type (A or AAAA).
#[derive(Debug)]
pub enum FamilyOutcome {
    /// Addresses of the asked type (at least one), with the smallest TTL of the records used.
    Addresses(Vec<IpAddr>, Duration),
    /// The name exists without records of the asked type; the SOA's negative TTL if any.
    NoData(Option<Duration>),
    /// The name does not exist; the SOA's negative TTL if any.
    NxDomain(Option<Duration>),
    /// The answer did not fit in UDP (TC bit): ask again over TCP.
    Truncated,
    /// An upstream failure (SERVFAIL, REFUSED, a malformed answer, …).
    Failed(ProxyError),
}

/// Asks one resolver for A and AAAA over one UDP flow through the tunnel.
async fn query_resolver(
    inner: &ResolverInner,
    tunnel: Uuid,
    server: SocketAddr,
    name: &Name,
    ctx: &FlowContext,
) -> Result<Answer, ProxyError> {
    let flow = inner.pool.open_udp(tunnel, server, ctx).await?;
    let mut pending = [
        build_query(name, RecordType::A, None)?,
        build_query(name, RecordType::AAAA, None)?,
    ];
    // Distinct ids so that the two answers can be told apart.
    if pending[1].id == pending[0].id {
        pending[1] = build_query(name, RecordType::AAAA, Some(pending[0].id.wrapping_add(1)))?;
    }
    let attempts = inner.config.attempts.max(1);
    for _ in 0..attempts {
        for question in pending.iter().filter(|p| p.outcome.is_none()) {
            flow.send(question.wire.clone()).await?;
        }
        let deadline = Instant::now() + inner.config.attempt_timeout;
        if let Some(nx) = collect_answers(&*flow, &mut pending, deadline, server).await? {
            return Ok(nx);
        }
        let usable = pending
            .iter()
            .any(|p| matches!(p.outcome, Some(FamilyOutcome::Addresses(..))));
        if usable || pending.iter().all(|p| p.outcome.is_some()) {
            break;
        }
    }
    if pending
        .iter()
        .any(|p| matches!(p.outcome, Some(FamilyOutcome::Truncated)))
    {
        let deadline = Instant::now() + inner.config.attempt_timeout;
        let retried = retry_over_tcp(inner, tunnel, server, &mut pending, ctx);
        match tokio::time::timeout_at(deadline, retried).await {
            Err(_elapsed) => {
                return Err(ProxyError::new(ErrorCode::DnsTimeout).with_details(format!(
                    "resolver {server} sent a truncated answer and no answer over TCP in time"
                )));
            }
            Ok(Err(err)) => return Err(err),
            Ok(Ok(Some(nx))) => return Ok(nx),
            Ok(Ok(None)) => {}
        }
    }
    combine(pending, server)
}

/// Asks the questions whose UDP answer was truncated again over one TCP stream through the
/// tunnel to the same resolver. Returns early with the answer on NXDOMAIN.
async fn retry_over_tcp(
    inner: &ResolverInner,
    tunnel: Uuid,
    server: SocketAddr,
    pending: &mut [Pending; 2],
    ctx: &FlowContext,
) -> Result<Option<Answer>, ProxyError> {
    let mut stream = inner
        .pool
        .open_tcp(tunnel, server, ctx)
        .await
        .map_err(|err| {
            ProxyError::new(ErrorCode::DnsError).with_details(format!(
                "resolver {server} sent a truncated answer, and asking it over TCP failed: {err}"
            ))
        })?;
    for question in pending
        .iter_mut()
        .filter(|p| matches!(p.outcome, Some(FamilyOutcome::Truncated)))
    {
        let answer = exchange_over_tcp(&mut stream, &question.wire, server).await?;
        let outcome = match read_answer(&answer, question.id, &question.query, server)? {
            Some(FamilyOutcome::Truncated) => {
                FamilyOutcome::Failed(ProxyError::new(ErrorCode::DnsError).with_details(format!(
                    "resolver {server} sent a truncated answer over TCP"
                )))
            }
            Some(outcome) => outcome,
            None => FamilyOutcome::Failed(ProxyError::new(ErrorCode::DnsError).with_details(
                format!("resolver {server} answered another question over TCP"),
            )),
        };
        if let FamilyOutcome::NxDomain(negative_ttl) = outcome {
            return Ok(Some(Answer::Negative {
                rcode: "NXDOMAIN",
                negative_ttl,
            }));
        }
        question.outcome = Some(outcome);
    }
    Ok(None)
}

/// One query and its answer on a DNS-over-TCP stream: each message is preceded by its length
/// as a big-endian u16 (RFC 1035 §4.2.2).
async fn exchange_over_tcp(
    stream: &mut BoxIo,
    query: &[u8],
    server: SocketAddr,
) -> Result<Vec<u8>, ProxyError> {
    let failed = |what: &str, err: std::io::Error| {
        ProxyError::new(ErrorCode::DnsError)
            .with_details(format!("DNS over TCP to {server}: {what}: {err}"))
    };
    let len = u16::try_from(query.len()).map_err(|_| {
        ProxyError::new(ErrorCode::DnsError)
            .with_details(format!("a DNS query of {} bytes is too long", query.len()))
    })?;
    let mut framed = Vec::with_capacity(2 + query.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| failed("sending the query", e))?;
    stream
        .flush()
        .await
        .map_err(|e| failed("sending the query", e))?;
    read_tcp_message(stream)
        .await
        .map_err(|e| failed("reading the answer", e))
}

/// Reads one length-prefixed DNS message off a TCP stream.
pub async fn read_tcp_message<R: tokio::io::AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// Reads datagrams until every question is answered or `deadline` passes. Returns early with
/// the answer when a resolver says NXDOMAIN (the name does not exist in either family).
async fn collect_answers(
    flow: &dyn UdpFlow,
    pending: &mut [Pending; 2],
    deadline: Instant,
    server: SocketAddr,
) -> Result<Option<Answer>, ProxyError> {
    while pending.iter().any(|p| p.outcome.is_none()) {
        let datagram = match tokio::time::timeout_at(deadline, flow.recv()).await {
            Err(_elapsed) => break,
            Ok(datagram) => datagram?,
        };
        let message = parse_message(&datagram, server)?;
        let Some(question) = pending
            .iter_mut()
            .find(|p| p.outcome.is_none() && answers(&message, p.id, &p.query))
        else {
            // A late answer to an earlier try, or not ours: not an answer to what is pending.
            continue;
        };
        let outcome = classify(&message, &question.query, server);
        if let FamilyOutcome::NxDomain(negative_ttl) = outcome {
            return Ok(Some(Answer::Negative {
                rcode: "NXDOMAIN",
                negative_ttl,
            }));
        }
        question.outcome = Some(outcome);
    }
    Ok(None)
}

fn parse_message(bytes: &[u8], server: SocketAddr) -> Result<Message, ProxyError> {
    Message::from_vec(bytes).map_err(|e| {
        ProxyError::new(ErrorCode::DnsError)
            .with_details(format!("malformed DNS answer from {server}: {e}"))
    })
}

/// Whether `message` is the answer to the query `id` asking `query`.
fn answers(message: &Message, id: u16, query: &Query) -> bool {
    id == message.metadata.id
        && message.metadata.message_type == MessageType::Response
        && message.queries.len() == 1
        && message.queries[0] == *query
}

/// What the resolver makes of `bytes` received from `server` after asking `query` with `id`:
/// `Ok(None)` when it is not an answer to that question (ignored on a UDP flow), an error when
/// it is not DNS at all.
pub fn read_answer(
    bytes: &[u8],
    id: u16,
    query: &Query,
    server: SocketAddr,
) -> Result<Option<FamilyOutcome>, ProxyError> {
    let message = parse_message(bytes, server)?;
    Ok(answers(&message, id, query).then(|| classify(&message, query, server)))
}

fn build_query(
    name: &Name,
    record_type: RecordType,
    id: Option<u16>,
) -> Result<Pending, ProxyError> {
    let mut message = Message::query();
    if let Some(id) = id {
        message.metadata.id = id;
    }
    message.metadata.recursion_desired = true;
    let query = Query::query(name.clone(), record_type);
    message.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    message.set_edns(edns);
    let wire = message.to_vec().map_err(|e| {
        ProxyError::new(ErrorCode::DnsError)
            .with_details(format!("cannot encode a DNS query for {name}: {e}"))
    })?;
    Ok(Pending {
        id: message.metadata.id,
        query,
        wire: Bytes::from(wire),
        outcome: None,
    })
}

/// Reads one answer to `query`, following CNAMEs inside the answer section.
fn classify(message: &Message, query: &Query, server: SocketAddr) -> FamilyOutcome {
    let rcode = message.metadata.response_code;
    match rcode {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return FamilyOutcome::NxDomain(soa_ttl(message)),
        other => {
            return FamilyOutcome::Failed(
                ProxyError::dns(rcode_name(other))
                    .with_details(format!("resolver {server} answered {}", rcode_name(other))),
            );
        }
    }
    if message.metadata.truncation {
        // What did fit may be a part of the records: ask again over TCP for all of them.
        return FamilyOutcome::Truncated;
    }
    if message.metadata.op_code != OpCode::Query {
        return FamilyOutcome::Failed(ProxyError::new(ErrorCode::DnsError).with_details(format!(
            "malformed DNS answer from {server}: not a query answer"
        )));
    }
    let mut owner = query.name().clone();
    let mut ttl = u32::MAX;
    let mut addrs = Vec::new();
    for _ in 0..=MAX_CNAME_HOPS {
        let mut alias = None;
        for record in message
            .answers
            .iter()
            .filter(|r| r.name == owner && r.dns_class == DNSClass::IN)
        {
            match (&record.data, query.query_type()) {
                (RData::A(a), RecordType::A) => {
                    addrs.push(IpAddr::V4(a.0));
                    ttl = ttl.min(record.ttl);
                }
                (RData::AAAA(a), RecordType::AAAA) => {
                    addrs.push(IpAddr::V6(a.0));
                    ttl = ttl.min(record.ttl);
                }
                (RData::CNAME(target), _) => alias = Some((target.0.clone(), record.ttl)),
                _ => {}
            }
        }
        match alias {
            Some((target, alias_ttl)) if addrs.is_empty() => {
                ttl = ttl.min(alias_ttl);
                owner = target;
            }
            _ => break,
        }
    }
    if addrs.is_empty() {
        return FamilyOutcome::NoData(soa_ttl(message));
    }
    FamilyOutcome::Addresses(addrs, Duration::from_secs(u64::from(ttl)))
}

/// Negative-caching TTL of an answer (RFC 2308 §5: the smaller of the SOA's TTL and MINIMUM).
fn soa_ttl(message: &Message) -> Option<Duration> {
    message.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(Duration::from_secs(u64::from(r.ttl.min(soa.minimum)))),
        _ => None,
    })
}

/// Merges the A and AAAA outcomes of one resolver.
fn combine(pending: [Pending; 2], server: SocketAddr) -> Result<Answer, ProxyError> {
    let mut addrs = Vec::new();
    let mut ttl: Option<Duration> = None;
    let mut negative_ttl: Option<Duration> = None;
    let mut failure = None;
    let mut unanswered = 0;
    for question in pending {
        match question.outcome {
            Some(FamilyOutcome::Addresses(found, found_ttl)) => {
                addrs.extend(found);
                ttl = Some(ttl.map_or(found_ttl, |t| t.min(found_ttl)));
            }
            Some(FamilyOutcome::NoData(t)) => {
                negative_ttl = match (negative_ttl, t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            // Returned early by `collect_answers`; kept for completeness.
            Some(FamilyOutcome::NxDomain(t)) => {
                return Ok(Answer::Negative {
                    rcode: "NXDOMAIN",
                    negative_ttl: t,
                });
            }
            Some(FamilyOutcome::Failed(err)) => failure = Some(err),
            // Only left when the TCP retry was not made; `query_resolver` always makes it.
            Some(FamilyOutcome::Truncated) => {
                failure = Some(
                    ProxyError::new(ErrorCode::DnsError)
                        .with_details(format!("resolver {server} sent a truncated answer")),
                );
            }
            None => unanswered += 1,
        }
    }
    if let Some(ttl) = ttl {
        return Ok(Answer::Addresses { addrs, ttl });
    }
    if let Some(err) = failure {
        return Err(err);
    }
    if unanswered > 0 {
        return Err(ProxyError::new(ErrorCode::DnsTimeout)
            .with_details(format!("no answer from resolver {server} in time")));
    }
    Ok(Answer::Negative {
        rcode: "NODATA",
        negative_ttl,
    })
}

/// The conventional mnemonic of a DNS response code (RFC 6895 registry names).
fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS => "BADVERS",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        _ => "RCODE_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
    use tokio::sync::mpsc;

    use super::*;
    use crate::tunnel_pool::BoxIo;

    /// How the mock resolver answers one name.
    #[derive(Clone)]
    enum Zone {
        Records {
            v4: Vec<Ipv4Addr>,
            v6: Vec<Ipv6Addr>,
            ttl: u32,
        },
        Alias {
            target: &'static str,
            ttl: u32,
        },
        Rcode(ResponseCode),
        NxDomainWithSoa {
            minimum: u32,
        },
        /// Never answers.
        Silent,
        /// Answers with bytes that are not DNS.
        Garbage,
        /// Answers with the TC bit and no records (the mock has no TCP).
        Truncated,
    }

    /// A mock tunnel pool whose UDP flows reach an in-memory DNS table instead of a tunnel.
    struct MockTunnelPool {
        zones: Mutex<HashMap<String, Zone>>,
        /// Questions received, all flows together.
        questions: Mutex<Vec<(SocketAddr, RecordType)>>,
        flows_opened: AtomicUsize,
    }

    impl MockTunnelPool {
        fn new(zones: &[(&str, Zone)]) -> Arc<Self> {
            Arc::new(Self {
                zones: Mutex::new(
                    zones
                        .iter()
                        .map(|(n, z)| ((*n).to_owned(), z.clone()))
                        .collect(),
                ),
                questions: Mutex::new(Vec::new()),
                flows_opened: AtomicUsize::new(0),
            })
        }

        fn questions(&self) -> Vec<(SocketAddr, RecordType)> {
            self.questions.lock().unwrap().clone()
        }

        fn set_zone(&self, name: &str, zone: Zone) {
            self.zones.lock().unwrap().insert(name.to_owned(), zone);
        }

        fn answer(&self, dest: SocketAddr, query: &[u8]) -> Option<Bytes> {
            let q = Message::from_vec(query).expect("the resolver sends valid queries");
            let question = q.queries[0].clone();
            self.questions
                .lock()
                .unwrap()
                .push((dest, question.query_type()));
            let name = question.name().to_ascii();
            let zone = self.zones.lock().unwrap().get(&name).cloned();
            let mut resp = Message::response(q.metadata.id, OpCode::Query);
            resp.add_query(question.clone());
            let owner = question.name().clone();
            match zone {
                None => resp.metadata.response_code = ResponseCode::NXDomain,
                Some(Zone::Silent) => return None,
                Some(Zone::Garbage) => return Some(Bytes::from_static(b"\x00\x01not dns")),
                Some(Zone::Truncated) => resp.metadata.truncation = true,
                Some(Zone::Rcode(rcode)) => resp.metadata.response_code = rcode,
                Some(Zone::NxDomainWithSoa { minimum }) => {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                    let soa = SOA::new(
                        Name::from_str("ns.internal.").unwrap(),
                        Name::from_str("admin.internal.").unwrap(),
                        1,
                        60,
                        60,
                        600,
                        minimum,
                    );
                    resp.add_authority(Record::from_rdata(
                        Name::from_str("internal.").unwrap(),
                        3600,
                        RData::SOA(soa),
                    ));
                }
                Some(Zone::Alias { target, ttl }) => {
                    let target = Name::from_str(target).unwrap();
                    resp.add_answer(Record::from_rdata(
                        owner,
                        ttl,
                        RData::CNAME(CNAME(target.clone())),
                    ));
                    if let Some(Zone::Records { v4, v6, ttl }) =
                        self.zones.lock().unwrap().get(&target.to_ascii()).cloned()
                    {
                        add_records(&mut resp, &target, question.query_type(), &v4, &v6, ttl);
                    }
                }
                Some(Zone::Records { v4, v6, ttl }) => {
                    add_records(&mut resp, &owner, question.query_type(), &v4, &v6, ttl);
                }
            }
            Some(Bytes::from(resp.to_vec().unwrap()))
        }
    }

    fn add_records(
        resp: &mut Message,
        owner: &Name,
        qtype: RecordType,
        v4: &[Ipv4Addr],
        v6: &[Ipv6Addr],
        ttl: u32,
    ) {
        match qtype {
            RecordType::A => {
                for ip in v4 {
                    resp.add_answer(Record::from_rdata(owner.clone(), ttl, RData::A(A(*ip))));
                }
            }
            RecordType::AAAA => {
                for ip in v6 {
                    resp.add_answer(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::AAAA(AAAA(*ip)),
                    ));
                }
            }
            _ => {}
        }
    }

    struct MockFlow {
        pool: Arc<MockTunnelPool>,
        dest: SocketAddr,
        replies_tx: mpsc::UnboundedSender<Bytes>,
        replies: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    }

    impl UdpFlow for MockFlow {
        fn send(&self, payload: Bytes) -> BoxFuture<'_, Result<(), ProxyError>> {
            if let Some(reply) = self.pool.answer(self.dest, &payload) {
                let _ = self.replies_tx.send(reply);
            }
            Box::pin(async { Ok(()) })
        }

        fn recv(&self) -> BoxFuture<'_, Result<Bytes, ProxyError>> {
            Box::pin(async move {
                self.replies
                    .lock()
                    .await
                    .recv()
                    .await
                    .ok_or_else(|| ProxyError::new(ErrorCode::ConnectionTerminated))
            })
        }
    }

    /// The pool handed to the resolver: a handle on the shared mock.
    struct PoolHandle(Arc<MockTunnelPool>);

    impl TunnelPool for PoolHandle {
        fn open_tcp<'a>(
            &'a self,
            _tunnel: Uuid,
            _dest: SocketAddr,
            _ctx: &'a FlowContext,
        ) -> BoxFuture<'a, Result<BoxIo, ProxyError>> {
            Box::pin(async { Err(ProxyError::new(ErrorCode::DestinationUnavailable)) })
        }

        fn open_udp<'a>(
            &'a self,
            _tunnel: Uuid,
            dest: SocketAddr,
            _ctx: &'a FlowContext,
        ) -> BoxFuture<'a, Result<Box<dyn UdpFlow>, ProxyError>> {
            self.0.flows_opened.fetch_add(1, Ordering::SeqCst);
            let (replies_tx, replies) = mpsc::unbounded_channel();
            let flow = MockFlow {
                pool: Arc::clone(&self.0),
                dest,
                replies_tx,
                replies: tokio::sync::Mutex::new(replies),
            };
            Box::pin(async move { Ok(Box::new(flow) as Box<dyn UdpFlow>) })
        }
    }

    fn resolver(pool: &Arc<MockTunnelPool>) -> DnsResolver {
        DnsResolver::new(Arc::new(PoolHandle(Arc::clone(pool))), DnsConfig::default())
    }

    const TUNNEL: Uuid = Uuid::from_u128(7);

    fn ctx() -> FlowContext {
        FlowContext {
            request_id: "req-1".into(),
        }
    }

    fn api_zone(ttl: u32) -> Zone {
        Zone::Records {
            v4: vec![Ipv4Addr::new(10, 0, 0, 5)],
            v6: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5)],
            ttl,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn asks_a_and_aaaa_through_the_virtual_resolver_ipv4_first() {
        let pool = MockTunnelPool::new(&[("api.internal.", api_zone(60))]);
        let addrs = resolver(&pool)
            .resolve(TUNNEL, &[], "api.internal", &ctx())
            .await
            .unwrap();
        assert_eq!(
            &addrs[..],
            &[
                IpAddr::from([10, 0, 0, 5]),
                IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5))
            ]
        );
        let mut asked = pool.questions();
        asked.sort_by_key(|(_, t)| u16::from(*t));
        assert_eq!(
            asked,
            vec![
                (VIRTUAL_RESOLVER, RecordType::A),
                (VIRTUAL_RESOLVER, RecordType::AAAA)
            ]
        );
        assert_eq!(
            pool.flows_opened.load(Ordering::SeqCst),
            1,
            "both questions share one flow"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn uses_the_routes_resolvers_when_given() {
        let pool = MockTunnelPool::new(&[("api.internal.", api_zone(60))]);
        let custom: SocketAddr = "10.0.0.53:53".parse().unwrap();
        resolver(&pool)
            .resolve(TUNNEL, &[custom], "api.internal", &ctx())
            .await
            .unwrap();
        assert!(pool.questions().iter().all(|(dest, _)| *dest == custom));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_lookups_are_answered_from_the_cache_until_the_ttl_expires() {
        let pool = MockTunnelPool::new(&[("api.internal.", api_zone(30))]);
        let dns = resolver(&pool);
        dns.resolve(TUNNEL, &[], "api.internal", &ctx())
            .await
            .unwrap();
        dns.resolve(TUNNEL, &[], "API.internal.", &ctx())
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(29)).await;
        dns.resolve(TUNNEL, &[], "api.internal", &ctx())
            .await
            .unwrap();
        assert_eq!(
            pool.questions().len(),
            2,
            "one A + one AAAA for three lookups"
        );

        pool.set_zone(
            "api.internal.",
            Zone::Records {
                v4: vec![Ipv4Addr::new(10, 0, 0, 6)],
                v6: vec![],
                ttl: 30,
            },
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let addrs = dns
            .resolve(TUNNEL, &[], "api.internal", &ctx())
            .await
            .unwrap();
        assert_eq!(
            &addrs[..],
            &[IpAddr::from([10, 0, 0, 6])],
            "expired entry is asked again"
        );
        assert_eq!(pool.questions().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_per_tunnel() {
        let pool = MockTunnelPool::new(&[("api.internal.", api_zone(60))]);
        let dns = resolver(&pool);
        dns.resolve(TUNNEL, &[], "api.internal", &ctx())
            .await
            .unwrap();
        dns.resolve(Uuid::from_u128(8), &[], "api.internal", &ctx())
            .await
            .unwrap();
        assert_eq!(pool.questions().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_share_one_query() {
        let pool = MockTunnelPool::new(&[("api.internal.", api_zone(60))]);
        let dns = resolver(&pool);
        let lookups = (0..10).map(|_| {
            let dns = dns.clone();
            async move { dns.resolve(TUNNEL, &[], "api.internal", &ctx()).await }
        });
        for result in futures::future::join_all(lookups).await {
            assert_eq!(result.unwrap().len(), 2);
        }
        assert_eq!(pool.flows_opened.load(Ordering::SeqCst), 1);
        assert_eq!(pool.questions().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn nxdomain_is_a_dns_error_with_its_rcode_and_is_cached_by_the_soa_minimum() {
        let pool =
            MockTunnelPool::new(&[("gone.internal.", Zone::NxDomainWithSoa { minimum: 10 })]);
        let dns = resolver(&pool);
        let err = dns
            .resolve(TUNNEL, &[], "gone.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.rcode.as_deref()),
            (ErrorCode::DnsError, Some("NXDOMAIN"))
        );
        assert_eq!(err.category(), wvpc_errors::Category::Client);
        let asked = pool.questions().len();
        tokio::time::advance(Duration::from_secs(9)).await;
        dns.resolve(TUNNEL, &[], "gone.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(pool.questions().len(), asked, "negative answer cached");
        tokio::time::advance(Duration::from_secs(2)).await;
        dns.resolve(TUNNEL, &[], "gone.internal", &ctx())
            .await
            .unwrap_err();
        assert!(
            pool.questions().len() > asked,
            "negative answer expired after the SOA minimum"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn servfail_is_an_upstream_dns_error_and_is_not_cached() {
        let pool =
            MockTunnelPool::new(&[("broken.internal.", Zone::Rcode(ResponseCode::ServFail))]);
        let dns = resolver(&pool);
        let err = dns
            .resolve(TUNNEL, &[], "broken.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.rcode.as_deref()),
            (ErrorCode::DnsError, Some("SERVFAIL"))
        );
        assert_eq!(err.category(), wvpc_errors::Category::BadUpstream);
        let asked = pool.questions().len();
        dns.resolve(TUNNEL, &[], "broken.internal", &ctx())
            .await
            .unwrap_err();
        assert!(pool.questions().len() > asked);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_by_the_first_resolver_falls_back_to_the_next() {
        let pool = MockTunnelPool::new(&[("api.internal.", Zone::Rcode(ResponseCode::Refused))]);
        let dns = resolver(&pool);
        let first: SocketAddr = "10.0.0.53:53".parse().unwrap();
        let second: SocketAddr = "10.0.0.54:53".parse().unwrap();
        let err = dns
            .resolve(TUNNEL, &[first, second], "api.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(err.rcode.as_deref(), Some("REFUSED"));
        let servers: Vec<SocketAddr> = pool.questions().iter().map(|(d, _)| *d).collect();
        assert!(servers.contains(&first) && servers.contains(&second));
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_without_addresses_is_nodata() {
        let pool = MockTunnelPool::new(&[(
            "empty.internal.",
            Zone::Records {
                v4: vec![],
                v6: vec![],
                ttl: 60,
            },
        )]);
        let err = resolver(&pool)
            .resolve(TUNNEL, &[], "empty.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(
            (err.code, err.rcode.as_deref()),
            (ErrorCode::DnsError, Some("NODATA"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cnames_inside_the_answer_are_followed_and_their_ttl_counts() {
        let pool = MockTunnelPool::new(&[
            (
                "www.internal.",
                Zone::Alias {
                    target: "api.internal.",
                    ttl: 5,
                },
            ),
            ("api.internal.", api_zone(600)),
        ]);
        let dns = resolver(&pool);
        let addrs = dns
            .resolve(TUNNEL, &[], "www.internal", &ctx())
            .await
            .unwrap();
        assert_eq!(addrs.len(), 2);
        tokio::time::advance(Duration::from_secs(6)).await;
        dns.resolve(TUNNEL, &[], "www.internal", &ctx())
            .await
            .unwrap();
        assert_eq!(
            pool.questions().len(),
            4,
            "cached for the CNAME's 5 s, not the A's 600 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_resolver_is_retried_once_then_times_out() {
        let pool = MockTunnelPool::new(&[("slow.internal.", Zone::Silent)]);
        let err = resolver(&pool)
            .resolve(TUNNEL, &[], "slow.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::DnsTimeout);
        assert_eq!(pool.questions().len(), 4, "A and AAAA, each sent twice");
    }

    #[tokio::test(start_paused = true)]
    async fn a_truncated_answer_without_tcp_is_a_dns_error_that_says_so() {
        let pool = MockTunnelPool::new(&[("big.internal.", Zone::Truncated)]);
        let err = resolver(&pool)
            .resolve(TUNNEL, &[], "big.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::DnsError);
        let details = err.details.unwrap();
        assert!(
            details.contains("truncated answer, and asking it over TCP failed"),
            "{details}"
        );
        assert_eq!(
            pool.questions().len(),
            2,
            "no UDP retry of a truncated answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_malformed_answer_is_a_dns_error() {
        let pool = MockTunnelPool::new(&[("bad.internal.", Zone::Garbage)]);
        let err = resolver(&pool)
            .resolve(TUNNEL, &[], "bad.internal", &ctx())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::DnsError);
        assert_eq!(err.rcode, None);
    }

    #[tokio::test(start_paused = true)]
    async fn ip_literals_and_invalid_names_need_no_query() {
        let pool = MockTunnelPool::new(&[]);
        let dns = resolver(&pool);
        let addrs = dns.resolve(TUNNEL, &[], "10.1.2.3", &ctx()).await.unwrap();
        assert_eq!(&addrs[..], &[IpAddr::from([10, 1, 2, 3])]);
        let err = dns
            .resolve(TUNNEL, &[], "bad..name", &ctx())
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::DnsError);
        assert!(pool.questions().is_empty());
    }
}

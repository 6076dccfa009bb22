//! A fake binding-worker: a real capnp `VpcBinding` server on 127.0.0.1:0 (or a given port,
//! to come back after [`FakeBindingWorker::stop`]) that answers from the request path instead
//! of reaching an origin; with a secret, behind the real platform handshake.
//!
//! | path | answer |
//! |---|---|
//! | `/refused…` | `deliver(error connectionRefused)` |
//! | `/nxdomain` | `deliver(error dnsError, rcode NXDOMAIN)` |
//! | `/cut` | 200, one chunk `partial`, then `abort(httpResponseIncomplete)` |
//! | `/hold…` | waits for [`FakeBindingWorker::release`], then echoes |
//! | `/drop` | closes the whole connection without answering |
//! | `/redirect/<status>?to=<location>` | `<status>` with that `Location` |
//! | `/redirect-loop` | 302 to itself |
//! | `/many-headers` | 200 with 30 000 headers (more than a `HeaderMap` holds) |
//! | anything else | 200 echoing what arrived (method, url, context, headers, body) |
//!
//! `connect` answers from the address (empty for a service binding: then as `echo`):
//!
//! | address | answer |
//! |---|---|
//! | `refused.test:<port>` | `opened(error connectionRefused)` |
//! | `nxdomain.test:<port>` | `opened(error dnsError, rcode NXDOMAIN)` |
//! | `resp.test:<port>` | a small Redis: `PING`, `SET k v`, `GET k` in RESP, as they arrive |
//! | `stall.test:<port>` | takes nothing until the runtime has a whole window of writes unanswered and [`FakeBindingWorker::release`] was called; then as `echo` |
//! | `reset.test:<port>` | takes the script's bytes to its FIN, sends `partial`, then `abort(connectionReadTimeout)` |
//! | `drop.test:<port>` | opened, sends `partial`, then closes the whole connection |
//! | `127.0.0.1:<port>` | dials it for real and relays both ways (FIN as FIN, a reset as a close); `opened(error connectionRefused)` when the dial fails |
//! | anything else | takes the script's bytes to its FIN, then sends them back, a line `connected <context>` and FIN |
//!
//! Whether the runtime reset a socket (`abort` on `toDestination`) is counted:
//! [`FakeBindingWorker::socket_resets`].
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp, twoparty};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_auth::{HANDSHAKE_TIMEOUT, handshake_as_binding_worker};
use wvpc_schemas::binding_capnp::{byte_stream, response_receiver, socket_receiver, vpc_binding};
use wvpc_schemas::byte_stream_flow::{InboxSender, Taken};
use wvpc_schemas::{PlatformSecret, StreamWriter, write_wire_error};

pub struct FakeBindingWorker {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    hold: Arc<Hold>,
}

/// `/hold` fetches: one permit of `arrived` per fetch held, one of `release` per fetch let go.
/// `resets`: one permit per socket the runtime reset (`abort` on `toDestination`).
struct Hold {
    arrived: Semaphore,
    release: Semaphore,
    resets: Semaphore,
}

impl FakeBindingWorker {
    /// Starts the server on its own thread (capnp-rpc is `!Send`); returns once it listens.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), None)
    }

    /// On `addr` (a binding-worker coming back on its old port); with `secret`, every
    /// connection must pass the platform handshake first.
    pub fn start_on(addr: SocketAddr, secret: Option<PlatformSecret>) -> Self {
        let (ready, bound) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let hold = Arc::new(Hold {
            arrived: Semaphore::new(0),
            release: Semaphore::new(0),
            resets: Semaphore::new(0),
        });
        let held = hold.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake binding-worker runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("bind fake");
                ready
                    .send(listener.local_addr().expect("fake addr"))
                    .expect("report addr");
                let mut stopped = stopped;
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    stream.set_nodelay(true).expect("nodelay");
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::task::spawn_local(serve_connection(
                        stream,
                        secret.clone(),
                        held.clone(),
                    ));
                }
            });
            // Dropping the LocalSet here closes every connection.
        });
        let addr = bound.recv().expect("fake binding-worker started");
        Self {
            addr,
            connections,
            stop: Some(stop),
            thread: Some(thread),
            hold,
        }
    }

    /// Waits until a `/hold` fetch has arrived (and is being held).
    pub async fn held(&self) {
        self.hold
            .arrived
            .acquire()
            .await
            .expect("never closed")
            .forget();
    }

    /// Waits until the runtime has reset a socket (`abort` on its `toDestination`).
    pub async fn socket_reset(&self) {
        self.hold
            .resets
            .acquire()
            .await
            .expect("never closed")
            .forget();
    }

    /// Lets one held `/hold` fetch answer.
    pub fn release(&self) {
        self.hold.release.add_permits(1);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection, as a killed process would; returns the
    /// address it listened on.
    pub fn stop(mut self) -> SocketAddr {
        self.stop_now();
        self.addr
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("fake binding-worker thread");
        }
    }
}

impl Drop for FakeBindingWorker {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    secret: Option<PlatformSecret>,
    hold: Arc<Hold>,
) {
    if let Some(secret) = &secret
        && let Err(err) = handshake_as_binding_worker(&mut stream, secret, HANDSHAKE_TIMEOUT).await
    {
        tracing::info!(error = %err, "fake binding-worker: handshake refused");
        return;
    }
    let (read, write) = stream.into_split();
    let network = twoparty::VatNetwork::new(
        read.compat(),
        write.compat_write(),
        rpc_twoparty_capnp::Side::Server,
        Default::default(),
    );
    let disconnect = Rc::new(RefCell::new(None));
    let binding: vpc_binding::Client = capnp_rpc::new_client(FakeBinding {
        disconnect: disconnect.clone(),
        hold,
    });
    let rpc = RpcSystem::new(Box::new(network), Some(binding.client));
    *disconnect.borrow_mut() = Some(Box::pin(rpc.get_disconnector()));
    let _ = rpc.await;
}

/// Closes the connection it came from when awaited.
type Disconnector = std::pin::Pin<Box<dyn Future<Output = Result<(), capnp::Error>>>>;

struct FakeBinding {
    disconnect: Rc<RefCell<Option<Disconnector>>>,
    hold: Arc<Hold>,
}

/// What the fake saw of one fetch.
struct Seen {
    method: String,
    url: String,
    path: String,
    context: String,
    headers: Vec<(String, String)>,
}

impl vpc_binding::Server for FakeBinding {
    async fn connect(
        self: CapRc<Self>,
        params: vpc_binding::ConnectParams,
        mut results: vpc_binding::ConnectResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let ctx = params.get_context()?;
        let context = format!(
            "service={} tunnel={} network={} binding={} script={} account={}",
            ctx.get_service_id()?.to_str()?,
            ctx.get_tunnel_id()?.to_str()?,
            ctx.get_network_id()?.to_str()?,
            ctx.get_binding()?.to_str()?,
            ctx.get_script()?.to_str()?,
            ctx.get_account()?.to_str()?,
        );
        let address = params.get_address()?.to_string()?;
        let receiver = params.get_receiver()?;
        let (events, from_script) = wvpc_schemas::inbox();
        let (pushed, pushed_bytes) = tokio::sync::watch::channel(0);
        results
            .get()
            .set_to_destination(capnp_rpc::new_client(SocketSink {
                events: RefCell::new(Some(events)),
                pushed,
            }));
        let hold = self.hold.clone();
        let disconnect = self.disconnect.clone();
        tokio::task::spawn_local(async move {
            let served = FakeBinding::serve_socket(
                address,
                context,
                receiver,
                from_script,
                pushed_bytes,
                hold,
                disconnect,
            );
            if let Err(err) = served.await {
                tracing::info!(error = %err, "fake binding-worker: socket ended");
            }
        });
        Ok(())
    }

    async fn fetch(
        self: CapRc<Self>,
        params: vpc_binding::FetchParams,
        mut results: vpc_binding::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let ctx = params.get_context()?;
        let head = params.get_head()?;
        let url = head.get_url()?.to_string()?;
        let path = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.path_and_query().map(|p| p.to_string()))
            .unwrap_or_default();
        let mut headers = Vec::new();
        for h in head.get_headers()? {
            headers.push((
                h.get_name()?.to_string()?,
                String::from_utf8_lossy(h.get_value()?).into_owned(),
            ));
        }
        let seen = Seen {
            method: head.get_method()?.to_string()?,
            url,
            path,
            context: format!(
                "service={} binding={} script={} account={} request_id={}\n\
                 network tunnel={} network={}",
                ctx.get_service_id()?.to_str()?,
                ctx.get_binding()?.to_str()?,
                ctx.get_script()?.to_str()?,
                ctx.get_account()?.to_str()?,
                ctx.get_request_id()?.to_str()?,
                ctx.get_tunnel_id()?.to_str()?,
                ctx.get_network_id()?.to_str()?,
            ),
            headers,
        };
        let receiver = params.get_response()?;

        // The request body ByteStream goes back at once; the answer comes after its end.
        let (done, body) = oneshot::channel();
        let collector = Collector {
            bytes: RefCell::new(Vec::new()),
            done: RefCell::new(Some(done)),
        };
        results
            .get()
            .set_request_body(capnp_rpc::new_client(collector));

        let disconnect = self.disconnect.clone();
        let hold = self.hold.clone();
        tokio::task::spawn_local(async move {
            let body = body.await.unwrap_or_default();
            if seen.path.starts_with("/hold") {
                hold.arrived.add_permits(1);
                hold.release.acquire().await.expect("never closed").forget();
            }
            if let Err(err) = answer(receiver, seen, body, disconnect).await {
                tracing::warn!(error = %err, "fake binding-worker: answering failed");
            }
        });
        Ok(())
    }
}

/// What the script sent on one socket.
enum FromScript {
    Bytes(Vec<u8>),
    Fin,
    Reset,
}

/// The script's bytes as the fake takes them: each write is answered only then, as the real
/// binding-worker does, so the runtime must keep to the flow-control window.
type SocketBytes = wvpc_schemas::byte_stream_flow::InboxReceiver<FromScript>;

impl FakeBinding {
    /// The `connect` of the table in the module docs.
    async fn serve_socket(
        address: String,
        context: String,
        receiver: socket_receiver::Client,
        mut from_script: SocketBytes,
        mut pushed_bytes: tokio::sync::watch::Receiver<usize>,
        hold: Arc<Hold>,
        disconnect: Rc<RefCell<Option<Disconnector>>>,
    ) -> Result<(), capnp::Error> {
        let host = address.rsplit_once(':').map_or("", |(host, _)| host);
        if host == "127.0.0.1" {
            return relay_loopback(&address, receiver, from_script).await;
        }
        let refuse = match host {
            "refused.test" => Some(ProxyError::new(ErrorCode::ConnectionRefused)),
            "nxdomain.test" => Some(ProxyError::dns("NXDOMAIN")),
            _ => None,
        };
        let mut opened = receiver.opened_request();
        match &refuse {
            Some(err) => write_wire_error(opened.get().init_result().init_error(), err),
            None => opened.get().init_result().set_opened(()),
        }
        let reply = opened.send().promise.await?;
        if refuse.is_some() {
            return Ok(());
        }
        let mut to_script = StreamWriter::new(reply.get()?.get_from_destination()?);
        if host == "drop.test" {
            to_script.write(b"partial").await?;
            to_script.flush().await?;
            let disconnector = disconnect.borrow_mut().take();
            if let Some(disconnector) = disconnector {
                disconnector.await?;
            }
            return Ok(());
        }
        if host == "stall.test" {
            // Reads nothing until the runtime has a whole window of writes unanswered.
            let window = wvpc_schemas::byte_stream_flow::WINDOW;
            let _ = pushed_bytes.wait_for(|n| *n >= window).await;
            hold.arrived.add_permits(1);
            hold.release.acquire().await.expect("never closed").forget();
        }
        let mut store = std::collections::HashMap::new();
        let mut pending = Vec::new();
        let mut seen = Vec::new();
        loop {
            match from_script.recv().await {
                Some(FromScript::Bytes(bytes)) => match host {
                    "resp.test" => {
                        pending.extend_from_slice(&bytes);
                        while let Some((command, used)) = parse_resp_command(&pending) {
                            pending.drain(..used);
                            let reply = resp_reply(&command, &mut store);
                            to_script.write(&reply).await?;
                        }
                    }
                    _ => seen.extend_from_slice(&bytes),
                },
                Some(FromScript::Reset) => {
                    hold.resets.add_permits(1);
                    return Ok(());
                }
                // Released without an end: the connection to the runtime broke.
                None => return Ok(()),
                Some(FromScript::Fin) => break,
            }
        }
        if host == "reset.test" {
            to_script.write(b"partial").await?;
            to_script
                .abort(&ProxyError::new(ErrorCode::ConnectionReadTimeout))
                .await?;
            return Ok(());
        }
        seen.extend_from_slice(format!("\nconnected address={address} {context}").as_bytes());
        to_script.write(&seen).await?;
        to_script.end().await
    }
}

/// A socket to a real server on loopback: the script's bytes to it, its bytes back.
async fn relay_loopback(
    address: &str,
    receiver: socket_receiver::Client,
    mut from_script: SocketBytes,
) -> Result<(), capnp::Error> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let dialled = tokio::net::TcpStream::connect(address).await;
    let mut opened = receiver.opened_request();
    match &dialled {
        Ok(_) => opened.get().init_result().set_opened(()),
        Err(_) => write_wire_error(
            opened.get().init_result().init_error(),
            &ProxyError::new(ErrorCode::ConnectionRefused),
        ),
    }
    let reply = opened.send().promise.await?;
    let Ok(stream) = dialled else {
        return Ok(());
    };
    stream.set_nodelay(true).expect("nodelay");
    let mut to_script = StreamWriter::new(reply.get()?.get_from_destination()?);
    let (mut read, mut write) = stream.into_split();
    let upstream = async move {
        while let Some(event) = from_script.recv().await {
            match event {
                FromScript::Bytes(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                FromScript::Fin => {
                    let _ = write.shutdown().await;
                    return;
                }
                FromScript::Reset => return,
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0; 16 << 10];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return to_script.end().await,
                Ok(n) => to_script.write(&buf[..n]).await?,
                Err(_) => {
                    return to_script
                        .abort(&ProxyError::new(ErrorCode::ConnectionTerminated))
                        .await;
                }
            }
        }
    };
    let (_, down) = tokio::join!(upstream, downstream);
    down
}

/// One RESP command (an array of bulk strings) at the start of `bytes`, and its length.
fn parse_resp_command(bytes: &[u8]) -> Option<(Vec<String>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&bytes[at..at + end], at + end + 2))
    };
    let (head, mut at) = line(0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, next) = line(at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let arg = bytes.get(next..next + len)?;
        args.push(String::from_utf8_lossy(arg).into_owned());
        at = next + len + 2;
        if bytes.len() < at {
            return None;
        }
    }
    Some((args, at))
}

fn resp_reply(
    command: &[String],
    store: &mut std::collections::HashMap<String, String>,
) -> Vec<u8> {
    match command.first().map(|c| c.to_ascii_uppercase()).as_deref() {
        Some("PING") => b"+PONG\r\n".to_vec(),
        Some("SET") if command.len() == 3 => {
            store.insert(command[1].clone(), command[2].clone());
            b"+OK\r\n".to_vec()
        }
        Some("GET") if command.len() == 2 => match store.get(&command[1]) {
            Some(value) => format!("${}\r\n{value}\r\n", value.len()).into_bytes(),
            None => b"$-1\r\n".to_vec(),
        },
        _ => b"-ERR unknown command\r\n".to_vec(),
    }
}

/// `toDestination` of a fake socket: queues the script's bytes for the fake to take.
struct SocketSink {
    /// `None` after `end` / `abort`.
    events: RefCell<Option<InboxSender<FromScript>>>,
    /// Bytes written so far.
    pushed: tokio::sync::watch::Sender<usize>,
}

impl SocketSink {
    fn push(&self, event: FromScript, bytes: usize, last: bool) -> Result<Taken, capnp::Error> {
        let pushed = {
            let events = self.events.borrow();
            let Some(events) = events.as_ref() else {
                return Err(capnp::Error::failed("the socket already ended".into()));
            };
            events
                .push(event, bytes)
                .map_err(|e| capnp::Error::failed(format!("fake socket: {e}")))
        };
        if last {
            self.events.borrow_mut().take();
        }
        self.pushed.send_modify(|n| *n += bytes);
        pushed
    }
}

impl byte_stream::Server for SocketSink {
    fn write(
        self: CapRc<Self>,
        params: byte_stream::WriteParams,
        _: byte_stream::WriteResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        // Queued now, in call order; answered once the fake took it.
        let queued = params
            .get()
            .and_then(|p| p.get_bytes())
            .and_then(|b| self.push(FromScript::Bytes(b.to_vec()), b.len(), false));
        async move {
            queued?
                .await
                .map_err(|e| capnp::Error::failed(format!("fake socket: {e}")))
        }
    }

    fn end(
        self: CapRc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        std::future::ready(self.push(FromScript::Fin, 0, true).map(drop))
    }

    fn abort(
        self: CapRc<Self>,
        _: byte_stream::AbortParams,
        _: byte_stream::AbortResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        std::future::ready(self.push(FromScript::Reset, 0, true).map(drop))
    }
}

async fn answer(
    receiver: response_receiver::Client,
    seen: Seen,
    body: Vec<u8>,
    disconnect: Rc<RefCell<Option<Disconnector>>>,
) -> Result<(), capnp::Error> {
    let path = seen.path.as_str();
    if path.starts_with("/refused") {
        return deliver_error(&receiver, &ProxyError::new(ErrorCode::ConnectionRefused)).await;
    }
    if path == "/nxdomain" {
        return deliver_error(&receiver, &ProxyError::dns("NXDOMAIN")).await;
    }
    if path == "/drop" {
        let disconnector = disconnect.borrow_mut().take();
        if let Some(disconnector) = disconnector {
            drop(receiver);
            disconnector.await?;
        }
        return Ok(());
    }

    let redirect = match path.strip_prefix("/redirect/") {
        Some(rest) => rest
            .split_once("?to=")
            .and_then(|(status, to)| Some((status.parse::<u16>().ok()?, to.to_owned()))),
        None if path == "/redirect-loop" => Some((302, path.to_owned())),
        None => None,
    };
    if let Some((status, location)) = redirect {
        let mut request = receiver.deliver_request();
        {
            let mut head = request.get().init_result().init_response();
            head.set_status(status);
            let mut headers = head.init_headers(1);
            headers.reborrow().get(0).set_name("location");
            headers.reborrow().get(0).set_value(location.as_bytes());
        }
        let response_body = request.send().promise.await?.get()?.get_body()?;
        write(&response_body, b"redirecting").await?;
        response_body.end_request().send().promise.await?;
        return Ok(());
    }

    if path == "/many-headers" {
        // More headers than an `http::HeaderMap` can hold (it panics above about 24 576).
        let mut request = receiver.deliver_request();
        {
            let mut head = request.get().init_result().init_response();
            head.set_status(200);
            let mut headers = head.init_headers(30_000);
            for i in 0..30_000 {
                headers.reborrow().get(i).set_name("x-many");
                headers.reborrow().get(i).set_value(b"1");
            }
        }
        // The runtime refuses the head, so the call fails; the script has its answer.
        let _ = request.send().promise.await;
        return Ok(());
    }

    let mut request = receiver.deliver_request();
    {
        let mut head = request.get().init_result().init_response();
        head.set_status(200);
        let mut headers = head.init_headers(2);
        headers.reborrow().get(0).set_name("content-type");
        headers.reborrow().get(0).set_value(b"text/plain");
        headers.reborrow().get(1).set_name("x-fake-path");
        headers.reborrow().get(1).set_value(path.as_bytes());
    }
    let response_body = request.send().promise.await?.get()?.get_body()?;

    if path == "/cut" {
        write(&response_body, b"partial").await?;
        let mut abort = response_body.abort_request();
        write_wire_error(
            abort.get().init_error(),
            &ProxyError::new(ErrorCode::HttpResponseIncomplete),
        );
        abort.send().promise.await?;
        return Ok(());
    }

    let mut echo = format!(
        "method={}\nurl={}\npath={}\n{}\n",
        seen.method, seen.url, seen.path, seen.context
    );
    for (name, value) in &seen.headers {
        echo.push_str(&format!("header {name}={value}\n"));
    }
    // Two writes: the body must arrive as a stream, not as one message.
    write(&response_body, echo.as_bytes()).await?;
    write(
        &response_body,
        format!("body={}", String::from_utf8_lossy(&body)).as_bytes(),
    )
    .await?;
    response_body.end_request().send().promise.await?;
    Ok(())
}

async fn deliver_error(
    receiver: &response_receiver::Client,
    err: &ProxyError,
) -> Result<(), capnp::Error> {
    let mut request = receiver.deliver_request();
    write_wire_error(request.get().init_result().init_error(), err);
    request.send().promise.await?;
    Ok(())
}

/// Writes `bytes` within the flow-control window, as the binding-worker does, and waits
/// until the script has taken them.
async fn write(stream: &byte_stream::Client, bytes: &[u8]) -> Result<(), capnp::Error> {
    let mut writer = StreamWriter::new(stream.clone());
    writer.write(bytes).await?;
    writer.flush().await
}

/// Request body sink: collects until `end`.
struct Collector {
    bytes: RefCell<Vec<u8>>,
    done: RefCell<Option<oneshot::Sender<Vec<u8>>>>,
}

impl byte_stream::Server for Collector {
    async fn write(
        self: CapRc<Self>,
        params: byte_stream::WriteParams,
        _: byte_stream::WriteResults,
    ) -> Result<(), capnp::Error> {
        self.bytes
            .borrow_mut()
            .extend_from_slice(params.get()?.get_bytes()?);
        Ok(())
    }

    async fn end(
        self: CapRc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> Result<(), capnp::Error> {
        if let Some(done) = self.done.borrow_mut().take() {
            let _ = done.send(self.bytes.take());
        }
        Ok(())
    }

    async fn abort(
        self: CapRc<Self>,
        _: byte_stream::AbortParams,
        _: byte_stream::AbortResults,
    ) -> Result<(), capnp::Error> {
        // Dropping `done` tells `fetch` the body failed; it then answers with what it has.
        self.done.borrow_mut().take();
        Ok(())
    }
}

//! `StreamWriter` and `inbox` over a real capnp-rpc connection: a body arrives whole and in
//! order, the writer never gets more than the window ahead of the reader, and `end` / `abort`
//! arrive after the data written before them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{RpcSystem, twoparty};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_capnp::byte_stream;
use wvpc_schemas::byte_stream_flow::{InboxReceiver, InboxSender, MAX_WRITE, WINDOW};
use wvpc_schemas::{StreamWriter, inbox, read_wire_error};

enum Event {
    Data(Bytes),
    End,
    Abort(ProxyError),
}

/// A `ByteStream` server as the runtime and the binding-worker implement it.
struct Sink {
    events: RefCell<Option<InboxSender<Event>>>,
}

impl byte_stream::Server for Sink {
    fn write(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::WriteParams,
        _: byte_stream::WriteResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let queued = (|| {
            let bytes = params.get()?.get_bytes()?;
            let events = self.events.borrow();
            let events = events
                .as_ref()
                .ok_or_else(|| capnp::Error::failed("written after the end".into()))?;
            events
                .push(Event::Data(Bytes::copy_from_slice(bytes)), bytes.len())
                .map_err(|e| capnp::Error::failed(e.to_string()))
        })();
        async move {
            queued?
                .await
                .map_err(|e| capnp::Error::failed(e.to_string()))
        }
    }

    fn end(
        self: capnp::capability::Rc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        if let Some(events) = self.events.borrow_mut().take() {
            let _ = events.push(Event::End, 0);
        }
        std::future::ready(Ok(()))
    }

    fn abort(
        self: capnp::capability::Rc<Self>,
        params: byte_stream::AbortParams,
        _: byte_stream::AbortResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let err = params
            .get()
            .and_then(|p| p.get_error())
            .map(read_wire_error);
        if let (Ok(err), Some(events)) = (err, self.events.borrow_mut().take()) {
            let _ = events.push(Event::Abort(err), 0);
        }
        std::future::ready(Ok(()))
    }
}

/// A `ByteStream` client whose server (one capnp connection away) feeds the returned inbox.
/// Must run inside a `LocalSet`.
fn connected_stream() -> (byte_stream::Client, InboxReceiver<Event>) {
    let (events, reader) = inbox();
    let server: byte_stream::Client = capnp_rpc::new_client(Sink {
        events: RefCell::new(Some(events)),
    });
    let (client_io, server_io) = tokio::io::duplex(64 << 10);
    let (read, write) = tokio::io::split(server_io);
    let network = twoparty::VatNetwork::new(
        read.compat(),
        write.compat_write(),
        Side::Server,
        Default::default(),
    );
    tokio::task::spawn_local(RpcSystem::new(Box::new(network), Some(server.client)));
    let (read, write) = tokio::io::split(client_io);
    let network = twoparty::VatNetwork::new(
        read.compat(),
        write.compat_write(),
        Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: byte_stream::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(rpc);
    (client, reader)
}

/// Byte `i` of the test body.
fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_body_in_order_and_holds_the_writer_at_the_window() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (stream, mut reader) = connected_stream();
            let sent = body(16 * WINDOW + 123);
            // Bytes whose `write` has returned, and whether `end` has returned.
            let accepted = Rc::new(Cell::new(0usize));
            let ended = Rc::new(Cell::new(false));
            let writer = tokio::task::spawn_local({
                let (sent, accepted, ended) = (sent.clone(), accepted.clone(), ended.clone());
                async move {
                    let mut writer = StreamWriter::new(stream);
                    // Pieces of an odd size, so that writes straddle MAX_WRITE.
                    for piece in sent.chunks(MAX_WRITE / 3 + 7) {
                        writer
                            .write(piece)
                            .await
                            .expect("the reader takes every write");
                        accepted.set(accepted.get() + piece.len());
                    }
                    writer.end().await.expect("the end is taken");
                    ended.set(true);
                }
            });

            let mut received = Vec::new();
            let mut most_ahead = 0;
            loop {
                // A slow reader: everyone else runs first, as far as they can.
                for _ in 0..50 {
                    tokio::task::yield_now().await;
                }
                let ahead = accepted.get().saturating_sub(received.len());
                most_ahead = most_ahead.max(ahead);
                assert!(
                    ahead <= WINDOW,
                    "the writer got {ahead} bytes ahead of the reader (window {WINDOW})"
                );
                match reader.recv().await.expect("the stream ends with end()") {
                    Event::Data(bytes) => received.extend_from_slice(&bytes),
                    Event::End => break,
                    Event::Abort(err) => panic!("aborted: {err}"),
                }
                assert!(
                    !ended.get(),
                    "end() returned before the reader took the body"
                );
            }
            writer.await.unwrap();
            assert!(ended.get());
            assert_eq!(received.len(), sent.len());
            assert!(received == sent, "the body arrived reordered or corrupted");
            assert!(
                most_ahead > MAX_WRITE,
                "writes were not kept in flight: at most {most_ahead} bytes ahead"
            );
        })
        .await;
}

#[tokio::test]
async fn an_abort_arrives_after_the_data_written_before_it() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (stream, mut reader) = connected_stream();
            let mut writer = StreamWriter::new(stream);
            writer.write(b"partial").await.unwrap();
            writer
                .abort(&ProxyError::new(ErrorCode::HttpResponseIncomplete).with_details("cut"))
                .await
                .unwrap();
            assert!(matches!(reader.recv().await, Some(Event::Data(b)) if b == "partial"));
            match reader.recv().await {
                Some(Event::Abort(err)) => {
                    assert_eq!(err.code, ErrorCode::HttpResponseIncomplete);
                    assert_eq!(err.details.as_deref(), Some("cut"));
                }
                _ => panic!("expected the abort"),
            }
            assert!(reader.recv().await.is_none());
        })
        .await;
}

#[tokio::test]
async fn a_gone_reader_fails_the_writer() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (stream, reader) = connected_stream();
            drop(reader);
            let mut writer = StreamWriter::new(stream);
            let mut failed = false;
            for _ in 0..(4 * WINDOW / MAX_WRITE) {
                if writer.write(&body(MAX_WRITE)).await.is_err() {
                    failed = true;
                    break;
                }
            }
            // Within the window the writes may all have been sent; their answers tell.
            failed = failed || writer.flush().await.is_err();
            assert!(failed, "writes to a stream nobody reads must fail");
        })
        .await;
}

//! [`Socket`]: a raw TCP connection through a binding, like `env.NET.connect(address)` in a
//! Worker.
//!
//! Through a `vpc_networks` binding the address is the destination (`host:port`, or
//! `[v6]:port`; a hostname is resolved through the tunnel); through a `vpc_services` binding
//! it is empty and the service's `tcp_port` is dialled. Bytes go through untouched: TLS, if
//! the protocol needs it, is the script's own.
//!
//! ```ignore
//! use wvpc_sdk::{Env, ProxyError};
//!
//! fn ping(env: &Env) -> Result<String, ProxyError> {
//!     let mut socket = env.binding("NET").connect("10.0.0.5:6379")?;
//!     socket.write_all(b"*1\r\n$4\r\nPING\r\n")?;
//!     socket.flush()?;
//!     let mut reply = [0; 64];
//!     let n = socket.read(&mut reply)?; // "+PONG\r\n"
//!     Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
//! }
//! ```
//!
//! Like fetch, every call blocks on wasi pollables. Reads end (`Ok(0)`) at the destination's
//! FIN; a reset or a broken path is a [`ProxyError`] with its code (`connection_terminated`,
//! …). [`Socket::shutdown_write`] half-closes: the destination sees FIN while its answer
//! still reads. Each socket counts as a subrequest and holds one of the request's
//! `limits.connections` until it is dropped, and none outlives its request.

use std::io;
use std::time::Duration;

use wasip2::io::streams::{InputStream, OutputStream, StreamError};

use crate::__bindings::wvpc::bindings::vpc;
use crate::error::ProxyError;

/// Largest chunk read at once.
const READ_CHUNK: u64 = 64 * 1024;

/// A connection being opened ([`Fetcher::start_connect`](crate::Fetcher::start_connect)).
#[derive(Debug)]
pub struct PendingSocket {
    pending: vpc::PendingSocket,
}

impl PendingSocket {
    pub(crate) fn start(binding: &str, address: &str) -> Result<Self, ProxyError> {
        let pending = vpc::connect(binding, address).map_err(ProxyError::from)?;
        Ok(Self { pending })
    }

    /// Whether the connection is open (or failed), so [`wait`](Self::wait) will not block.
    pub fn is_ready(&self) -> bool {
        self.pending.subscribe().ready()
    }

    /// Blocks until the connection is open; why it could not open otherwise
    /// (`connection_refused`, `dns_error`, `destination_ip_prohibited`, …).
    pub fn wait(self) -> Result<Socket, ProxyError> {
        self.pending.subscribe().block();
        match self.pending.get() {
            Some(Ok((input, output))) => Ok(Socket {
                input: Some(input),
                output: Some(output),
            }),
            Some(Err(code)) => Err(ProxyError::from(code)),
            None => Err(ProxyError::internal()),
        }
    }

    /// [`wait`](Self::wait), for at most `timeout`: `None` when the connection is not open
    /// by then (it is abandoned).
    pub fn wait_timeout(self, timeout: Duration) -> Option<Result<Socket, ProxyError>> {
        let ready = {
            let open = self.pending.subscribe();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            let timer = wasip2::clocks::monotonic_clock::subscribe_duration(nanos);
            wasip2::io::poll::poll(&[&open, &timer]);
            open.ready()
        };
        ready.then(|| self.wait())
    }
}

/// An open TCP connection through a binding. Also [`io::Read`] and [`io::Write`] (errors
/// carry the [`ProxyError`]).
///
/// Dropping it closes the connection: the bytes written so far still go out, then FIN.
#[derive(Debug)]
pub struct Socket {
    input: Option<InputStream>,
    /// `None` once the writing half is shut down.
    output: Option<OutputStream>,
}

impl Socket {
    /// Reads what has arrived into `buf`, waiting until something has: the number of bytes,
    /// `0` once the destination has closed its side (FIN) or `buf` is empty.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ProxyError> {
        let Some(input) = &self.input else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let want = u64::try_from(buf.len()).unwrap_or(u64::MAX).min(READ_CHUNK);
        loop {
            match input.blocking_read(want) {
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => {
                    buf[..chunk.len()].copy_from_slice(&chunk);
                    return Ok(chunk.len());
                }
                Err(StreamError::Closed) => {
                    self.input = None;
                    return Ok(0);
                }
                Err(StreamError::LastOperationFailed(err)) => {
                    self.input = None;
                    return Err(ProxyError::from_stream_error(&err));
                }
            }
        }
    }

    /// Reads until the destination closes its side, appending to `out`; the bytes read.
    pub fn read_to_end(&mut self, out: &mut Vec<u8>) -> Result<usize, ProxyError> {
        let start = out.len();
        let mut buf = vec![0; READ_CHUNK as usize];
        loop {
            match self.read(&mut buf)? {
                0 => return Ok(out.len() - start),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Writes all of `bytes`, waiting while the connection's window is full.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), ProxyError> {
        let output = self.writer()?;
        while !bytes.is_empty() {
            let room = match output.check_write() {
                Ok(0) => {
                    output.subscribe().block();
                    continue;
                }
                Ok(n) => usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len()),
                Err(err) => return Err(write_error(err)),
            };
            let (now, rest) = bytes.split_at(room);
            output.write(now).map_err(write_error)?;
            bytes = rest;
        }
        Ok(())
    }

    /// Reports a broken connection now, and waits while the connection's queue towards the
    /// destination is full. The bytes written so far go out in order either way: this is not
    /// needed before a read or a shutdown.
    pub fn flush(&mut self) -> Result<(), ProxyError> {
        self.writer()?.blocking_flush().map_err(write_error)
    }

    /// Half-closes: sends FIN after the bytes written so far. The destination sees the end
    /// of the script's bytes; its answer still reads. Later writes fail. Does not wait for
    /// the destination to take the bytes; an error already known (the connection broke) is
    /// returned.
    pub fn shutdown_write(&mut self) -> Result<(), ProxyError> {
        let Some(output) = self.output.take() else {
            return Ok(());
        };
        let checked = output.flush().map_err(write_error);
        drop(output); // the FIN, behind the bytes already written
        checked
    }

    /// Closes both directions now (same as dropping the socket).
    pub fn close(self) {}

    fn writer(&self) -> Result<&OutputStream, ProxyError> {
        self.output.as_ref().ok_or_else(|| {
            ProxyError::request_error("the socket's writing half is shut down (shutdown_write)")
        })
    }
}

fn write_error(err: StreamError) -> ProxyError {
    match err {
        StreamError::LastOperationFailed(err) => ProxyError::from_stream_error(&err),
        StreamError::Closed => {
            ProxyError::from(wasip2::http::types::ErrorCode::ConnectionTerminated)
        }
    }
}

impl io::Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Socket::read(self, buf).map_err(io::Error::other)
    }
}

impl io::Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Socket::flush(self).map_err(io::Error::other)
    }
}

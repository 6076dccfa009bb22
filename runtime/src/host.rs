//! The per-request host side of a script: the `Store` data ([`HostState`]), the linker with
//! WASI + wasi:http + `wvpc:bindings/vpc`, and the `vpc.fetch` implementation.
//!
//! `vpc.fetch(binding, request, options, init)` checks the binding, records it as the pending route
//! of the request's [`OutboundHooks`], and then runs wasmtime-wasi-http's own
//! `outgoing-handler.handle` — so validation, header handling and body streaming are exactly
//! wasi-http's. `handle` calls `send_request` synchronously, which takes the pending route;
//! every other outgoing request finds none and is denied.
//!
//! `vpc.connect(binding, address)` checks the binding the same way and hands the rest to
//! [`OutboundHooks::connect`]; the `pending-socket` and its streams are [`crate::socket`]'s.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{CallHook, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler::Host as _;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{RequestOptions, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::limits::{CpuMeter, LimitExceeded, MemoryLimiter};
use crate::outbound::{OutboundHooks, Redirect, ScriptBindings};
use crate::script_output::{OutputSource, RequestOutput, ScriptStream};
use crate::socket::PendingSocket;

/// Host bindings generated from `schemas/wit` (world `wvpc:bindings/script`). The WASI and
/// wasi:http parts are wasmtime's own, so their resources are shared with the standard
/// implementations.
mod generated {
    wasmtime::component::bindgen!({
        path: "../schemas/wit",
        world: "wvpc:bindings/script",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
            "wasi:random": wasmtime_wasi::p2::bindings::random,
            "wasi:cli": wasmtime_wasi::p2::bindings::cli,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wvpc:bindings/vpc.pending-socket": crate::socket::PendingSocket,
        },
        require_store_data_send: true,
    });
}

use generated::wvpc::bindings::vpc::{FetchInit, RedirectMode};
pub(crate) use generated::{Script, ScriptPre};

/// The `Store` data of one instance. What belongs to the request it serves (the outbound
/// hooks with the request id and fetch budget, the request id of its output, the CPU meter
/// and the limit flags) is replaced by [`HostState::start_request`] when the instance is
/// reused.
pub(crate) struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    bindings: Arc<ScriptBindings>,
    hooks: OutboundHooks,
    /// The instance's stdout and stderr (also inside `wasi`), to switch their request id.
    stdout: RequestOutput,
    stderr: RequestOutput,
    /// Memory limit; the instance pool enforces its slot size, this the script's own limit
    /// (and covers an engine that fell back to on-demand allocation).
    memory: MemoryLimiter,
    /// Time the guest's own code ran (the CPU-limit counter).
    cpu: CpuMeter,
    /// Set by the epoch callback when the CPU limit stops the guest.
    cpu_exceeded: bool,
}

impl HostState {
    /// A fresh store for one request of the script described by `bindings`.
    pub fn new_store(
        engine: &Engine,
        bindings: Arc<ScriptBindings>,
        request_id: Arc<str>,
    ) -> Store<Self> {
        let output = |stream| {
            RequestOutput::new(
                bindings.output.clone(),
                OutputSource {
                    account_id: bindings.account.clone(),
                    script: bindings.script.clone(),
                    version: bindings.version.clone(),
                    request_id: request_id.clone(),
                },
                stream,
            )
        };
        let stdout = output(ScriptStream::Stdout);
        let stderr = output(ScriptStream::Stderr);
        let mut wasi = WasiCtx::builder();
        // Script output is captured per request; no env, args, files or sockets.
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false);
        let limits = bindings.limits;
        let state = HostState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks::new(bindings.clone(), request_id),
            bindings,
            stdout,
            stderr,
            memory: MemoryLimiter {
                max: limits.memory_bytes,
                refused: false,
                size: 0,
            },
            cpu: CpuMeter::default(),
            cpu_exceeded: false,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.memory);
        // The CPU clock runs only while guest code does.
        store.call_hook(|mut store, hook| {
            let cpu = &mut store.data_mut().cpu;
            match hook {
                CallHook::CallingWasm | CallHook::ReturningFromHost => cpu.resume(),
                CallHook::ReturningFromWasm | CallHook::CallingHost => cpu.pause(),
            }
            Ok(())
        });
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut store| {
            let state = store.data_mut();
            if state.cpu.used() > limits.cpu {
                state.cpu_exceeded = true;
                return Err(wasmtime::format_err!(
                    "the script exceeded its CPU time limit (limits.cpu_ms = {})",
                    limits.cpu.as_millis()
                ));
            }
            // Yield so one busy script cannot hold a worker thread.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// Readies a reused instance's store for the request `request_id`: the previous
    /// request's partial output lines are emitted under its own id, and the request id, the
    /// fetch budget, the CPU meter and the limit flags start afresh.
    pub fn start_request(store: &mut Store<Self>, request_id: Arc<str>) {
        let state = store.data_mut();
        state.stdout.start_request(request_id.clone());
        state.stderr.start_request(request_id.clone());
        state.hooks = OutboundHooks::new(state.bindings.clone(), request_id);
        state.cpu = CpuMeter::default();
        state.cpu_exceeded = false;
        state.memory.refused = false;
        store.set_epoch_deadline(1);
    }

    /// Emits the request's partial last output lines and resets the sockets it left open
    /// (the instance is kept for another).
    pub fn finish_request(&self) {
        self.stdout.finish_request();
        self.stderr.finish_request();
        self.hooks.end_sockets();
    }

    /// The script's `limits.memory_mb`, in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory.max
    }

    /// Bytes of linear memory the instance has.
    pub fn memory_size(&self) -> usize {
        self.memory.size
    }

    /// Resources (streams, bodies, fields…) the guest holds handles to.
    pub fn resources(&mut self) -> usize {
        self.table.iter_mut().count()
    }

    /// The limit that stopped this request's guest, if one did.
    pub fn limit_exceeded(&self) -> Option<LimitExceeded> {
        if self.cpu_exceeded {
            Some(LimitExceeded::Cpu)
        } else if self.memory.refused {
            Some(LimitExceeded::Memory)
        } else {
            None
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl generated::wvpc::bindings::vpc::Host for HostState {
    fn fetch(
        &mut self,
        binding: String,
        request: Resource<HostOutgoingRequest>,
        options: Option<Resource<RequestOptions>>,
        init: FetchInit,
    ) -> wasmtime::Result<Result<Resource<HostFutureIncomingResponse>, ErrorCode>> {
        let redirect = match init.redirect {
            RedirectMode::Follow => Redirect::Follow,
            RedirectMode::Manual => Redirect::Manual,
        };
        let Some(route) = self.hooks.route_for(&binding, redirect) else {
            tracing::warn!(
                request_id = %self.hooks.request_id(),
                binding = %binding,
                "script used a binding that its config does not declare"
            );
            // The request is consumed either way (it is an owned handle).
            self.table.delete(request)?;
            if let Some(options) = options {
                self.table.delete(options)?;
            }
            return Ok(Err(ErrorCode::ConfigurationError));
        };
        self.hooks.set_pending(route);
        let result = self.http().handle(request, options);
        // `handle` may fail before reaching `send_request`; a route left behind would send the
        // script's next plain outgoing request to this binding.
        self.hooks.clear_pending();
        match result {
            Ok(future) => Ok(Ok(future)),
            // An `error-code` goes to the script; anything else is a trap.
            Err(err) => err.downcast().map(Err),
        }
    }

    fn connect(
        &mut self,
        binding: String,
        address: String,
    ) -> wasmtime::Result<Result<Resource<PendingSocket>, ErrorCode>> {
        // The redirect mode means nothing to a socket.
        let Some(route) = self.hooks.route_for(&binding, Redirect::Manual) else {
            tracing::warn!(
                request_id = %self.hooks.request_id(),
                binding = %binding,
                "script connected through a binding that its config does not declare"
            );
            return Ok(Err(ErrorCode::ConfigurationError));
        };
        match self.hooks.connect(route, address) {
            Ok(pending) => Ok(Ok(self.table.push(pending)?)),
            Err(code) => Ok(Err(code)),
        }
    }
}

impl generated::wvpc::bindings::vpc::HostPendingSocket for HostState {
    fn subscribe(
        &mut self,
        socket: Resource<PendingSocket>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime_wasi::p2::subscribe(&mut self.table, socket)
    }

    fn get(
        &mut self,
        socket: Resource<PendingSocket>,
    ) -> wasmtime::Result<
        Option<Result<(Resource<DynInputStream>, Resource<DynOutputStream>), ErrorCode>>,
    > {
        let taken = self.table.get_mut(&socket)?.take();
        Ok(match taken {
            None => None,
            Some(Err(err)) => Some(Err(crate::error_map::wasi_error_code(&err))),
            Some(Ok((input, output))) => {
                let input: DynInputStream = Box::new(input);
                let output: DynOutputStream = Box::new(output);
                Some(Ok((self.table.push(input)?, self.table.push(output)?)))
            }
        })
    }

    fn drop(&mut self, socket: Resource<PendingSocket>) -> wasmtime::Result<()> {
        self.table.delete(socket)?;
        Ok(())
    }
}

/// Builds the linker every script of the process uses.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    // The full WASI p2 set: Rust's std on wasm32-wasip2 imports more than wasi:http/proxy
    // (environment, exit, filesystem), all of which are empty or denied by the `WasiCtx`.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    generated::wvpc::bindings::vpc::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    crate::error_map::add_http_error_code(&mut linker, |s: &mut HostState| &mut s.table)?;
    Ok(linker)
}

// @workers-vpc/types: what a JavaScript script sees on workers-vpc.
//
// The shapes follow Cloudflare's `@cloudflare/workers-types` for the same objects (Fetcher,
// Socket, ExecutionContext, ExportedHandler), narrowed to what workers-vpc implements; each
// difference is documented where it is declared. Importing this file (or naming it in
// tsconfig's `types`, or `/// <reference types="@workers-vpc/types" />`, which the
// `worker-configuration.d.ts` written by `wvpc types` does) also declares every type below
// globally, as `@cloudflare/workers-types` does — use one of the two packages, not both.
//
// The web platform types these build on (Request, Response, ReadableStream, …) come from
// TypeScript's own libraries: `"lib": ["ES2022", "WebWorker"]` in tsconfig.

/**
 * The code of a failure on the way to a private service: an RFC 9209 Proxy-Status error
 * type, plus `rate_limited`. The same codes, with the same names, as the Rust SDK's
 * `ProxyError` and the `Proxy-Status` header.
 */
// The list below is checked against the wvpc-errors crate by `cargo test -p wvpc-cli --test types`.
export type ProxyErrorCode =
  | "dns_timeout"
  | "dns_error"
  | "destination_not_found"
  | "destination_unavailable"
  | "destination_ip_prohibited"
  | "destination_ip_unroutable"
  | "connection_refused"
  | "connection_terminated"
  | "connection_timeout"
  | "connection_read_timeout"
  | "connection_write_timeout"
  | "connection_limit_reached"
  | "tls_protocol_error"
  | "tls_certificate_error"
  | "tls_alert_received"
  | "http_request_error"
  | "http_request_denied"
  | "http_response_incomplete"
  | "http_response_header_section_size"
  | "http_response_header_size"
  | "http_response_body_size"
  | "http_response_timeout"
  | "http_upgrade_failed"
  | "http_protocol_error"
  | "proxy_internal_response"
  | "proxy_internal_error"
  | "proxy_configuration_error"
  | "proxy_loop_detected"
  | "rate_limited";

/**
 * What a binding's `fetch()` rejects with, and what a socket's `opened`, `closed`, reads
 * and writes fail with, when the private service cannot be reached: a plain `Error` whose
 * `message` is `ProxyError: <code>` (e.g. `ProxyError: connection_refused`, the text the
 * Rust SDK gives) and whose `code` is the code alone.
 *
 * It is not a class: test a caught value with `error.message.startsWith("ProxyError: ")`
 * or read `error.code`.
 */
export interface ProxyError extends Error {
  message: `ProxyError: ${ProxyErrorCode}`;
  code: ProxyErrorCode;
}

/**
 * Where `connect()` goes: a host name (resolved through the tunnel, on the private network)
 * or an IP address, and a port.
 */
export interface SocketAddress {
  hostname: string;
  port: number;
}

/**
 * Options of `connect()`.
 *
 * Differences from Cloudflare: sockets are plaintext TCP only — `secureTransport` must be
 * `"off"` (or absent); TLS to the destination is the script's business over the socket.
 * `startTls()` does not exist.
 */
export interface SocketOptions {
  /** Only `"off"`: `"on"` and `"starttls"` throw a `TypeError`. */
  secureTransport?: "off";
  /**
   * Accepted, and has no effect: closing `writable` always half-closes (the destination
   * sees end-of-file and its answer still reads), and the end of `readable` never closes
   * `writable` — as `allowHalfOpen: true` does on Cloudflare. Close both with `close()`.
   */
  allowHalfOpen?: boolean;
}

/** What `Socket.opened` resolves to. */
export interface SocketInfo {
  /** The address as given to `connect()` (`host:port`). */
  remoteAddress?: string;
  /** Empty: the socket's local end is on the connector, not in the script. */
  localAddress?: string;
}

/**
 * A TCP connection through a binding, opened by `connect()`.
 *
 * The connection opens in the background: a failure (e.g. `ProxyError:
 * connection_refused`) rejects `opened` and `closed`, and errors both streams.
 */
export interface Socket {
  /** The destination's bytes; ends when the destination closes its side. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the destination; `close()` on it (or its writer) half-closes the connection. */
  readonly writable: WritableStream<Uint8Array>;
  /** Resolves once the connection is open; rejects with a {@link ProxyError}. */
  readonly opened: Promise<SocketInfo>;
  /** Resolves when the socket is closed; rejects with a {@link ProxyError} on a failure. */
  readonly closed: Promise<void>;
  /** Closes both directions. */
  close(): Promise<void>;
}

/**
 * A binding declared in `vpc_services` or `vpc_networks` (`env.API`, `env.NET`).
 *
 * Differences from Cloudflare's `Fetcher`: only `fetch` and `connect` (no `queue`,
 * `scheduled`, RPC methods); a failure to reach the service rejects with a
 * {@link ProxyError} rather than answering with an error response.
 */
export interface Fetcher {
  /**
   * Sends a request to the private service (a `vpc_services` binding: the binding picks the
   * service, the URL's host becomes the Host header) or to the URL's host on the network
   * (a `vpc_networks` binding). Both bodies stream.
   *
   * Rejects with a {@link ProxyError} when the service cannot be reached.
   */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /**
   * Opens a plaintext TCP connection through the binding: to `address` on the network
   * (`"db.internal:5432"`, `"[fd00::7]:80"` or `{ hostname, port }`) for a `vpc_networks`
   * binding; to the service's own `tcp_port` with `""` for a `vpc_services` binding.
   */
  connect(address: string | SocketAddress, options?: SocketOptions): Socket;
}

/**
 * The third argument of the fetch handler.
 */
export interface ExecutionContext {
  /** Keeps the script running for `promise` after the response is returned. */
  waitUntil(promise: Promise<unknown>): void;
  /**
   * Accepted for compatibility and has no effect on workers-vpc: there is no origin to fall
   * through to; an exception thrown by the handler is a 500 for that request.
   */
  passThroughOnException(): void;
}

/**
 * The handler of a request: `env` holds the script's bindings.
 */
export type ExportedHandlerFetchHandler<Env = unknown> = (
  request: Request,
  env: Env,
  ctx: ExecutionContext,
) => Response | Promise<Response>;

/**
 * The default export of a script: `export default { async fetch(request, env, ctx) { … } }
 * satisfies ExportedHandler<Env>`.
 *
 * Difference from Cloudflare: `fetch` is required (the build refuses a script without it)
 * and is the only handler (no `scheduled`, `queue`, `tail`, …).
 */
export interface ExportedHandler<Env = unknown> {
  fetch: ExportedHandlerFetchHandler<Env>;
}

// The same types, declared globally (as @cloudflare/workers-types does), for scripts that
// use them without importing them and for worker-configuration.d.ts.
type WvpcProxyErrorCode = ProxyErrorCode;
type WvpcProxyError = ProxyError;
type WvpcSocketAddress = SocketAddress;
type WvpcSocketOptions = SocketOptions;
type WvpcSocketInfo = SocketInfo;
type WvpcSocket = Socket;
type WvpcFetcher = Fetcher;
type WvpcExecutionContext = ExecutionContext;
type WvpcExportedHandlerFetchHandler<Env> = ExportedHandlerFetchHandler<Env>;
type WvpcExportedHandler<Env> = ExportedHandler<Env>;

declare global {
  type ProxyErrorCode = WvpcProxyErrorCode;
  interface ProxyError extends WvpcProxyError {}
  interface SocketAddress extends WvpcSocketAddress {}
  interface SocketOptions extends WvpcSocketOptions {}
  interface SocketInfo extends WvpcSocketInfo {}
  interface Socket extends WvpcSocket {}
  interface Fetcher extends WvpcFetcher {}
  interface ExecutionContext extends WvpcExecutionContext {}
  type ExportedHandlerFetchHandler<Env = unknown> = WvpcExportedHandlerFetchHandler<Env>;
  interface ExportedHandler<Env = unknown> extends WvpcExportedHandler<Env> {}
}

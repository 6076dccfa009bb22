// The entry of every JavaScript script (wvpc-js-build bundles it in front of the script):
// serves the script's `export default { fetch(request, env, ctx) }` on the component's
// wasi:http/incoming-handler, and gives `env` the script's bindings.
//
// - `env.X.fetch(input, init)` is the global `fetch`, tagged with the request header
//   `wvpc-binding: X` (and `wvpc-redirect: manual` for `redirect: "manual"`): the runtime
//   routes a tagged request through the binding exactly as `vpc.fetch`, streaming both
//   bodies, and removes the tags. An untagged `fetch` stays `http_request_denied`.
//   A binding failure comes back as a response marked `wvpc-binding-error: <code>`, thrown
//   here as `Error("ProxyError: <code>")`, the text the Rust SDK gives.
// - `env.X.connect(address)` opens a socket with `wvpc:bindings/vpc.connect`; its reads wait
//   for the destination's bytes with the instance's other work paused (custom imports are
//   synchronous in componentize-js).
import worker from "wvpc:entry";
import { connect as vpcConnect } from 'wvpc:bindings/vpc@0.1.0';
import { httpErrorCode } from 'wasi:http/types@0.2.10';

if (worker === null || (typeof worker !== 'object' && typeof worker !== 'function')) {
  throw new Error('wvpc: the script\'s default export is not an object: export default { async fetch(request, env, ctx) { ... } }');
}
if (typeof worker.fetch !== 'function') {
  throw new Error('wvpc: the script\'s default export has no fetch handler: export default { async fetch(request, env, ctx) { ... } }');
}

const BINDING = 'wvpc-binding';
const REDIRECT = 'wvpc-redirect';
const UPGRADE = 'wvpc-upgrade';
const METHOD = 'wvpc-method';
const BINDING_ERROR = 'wvpc-binding-error';
const STATUS = 'wvpc-status';

function proxyError(code) {
  const error = new Error(`ProxyError: ${code}`);
  error.code = code;
  return error;
}

// A wasi:http error-code variant as the code's wire name (`connection_refused`).
const VARIANT_NAMES = {
  'configuration-error': 'proxy_configuration_error',
  'loop-detected': 'proxy_loop_detected',
};
function wireName(errorCode) {
  if (!errorCode) return 'proxy_internal_error';
  if (errorCode.tag === 'internal-error') return errorCode.val || 'proxy_internal_error';
  return VARIANT_NAMES[errorCode.tag] ?? errorCode.tag.toLowerCase().replaceAll('-', '_');
}

const engineFetch = globalThis.fetch;

// The engine's fetch, tagged with `binding` ('' for none: the runtime refuses it).
async function taggedFetch(binding, input, init) {
  // An upgrade (WebSocket): the engine drops `Upgrade` and `Connection`, and refuses a GET
  // with a body (the frames): it travels as POST tagged with the protocol, and the runtime
  // puts the method and the headers back.
  const upgrade = init?.headers !== undefined ? new Headers(init.headers).get('upgrade')
    : input instanceof Request ? input.headers.get('upgrade') : null;
  let method;
  if (upgrade && String(init?.method ?? 'GET').toUpperCase() === 'GET' && init?.body != null) {
    init = { ...init, method: 'POST' };
    method = 'GET';
  }
  const request = new Request(input, init);
  const headers = new Headers(request.headers);
  headers.set(BINDING, binding);
  if (upgrade) headers.set(UPGRADE, upgrade);
  else headers.delete(UPGRADE);
  if (method) headers.set(METHOD, method);
  else headers.delete(METHOD);
  // The engine's Request may not keep `redirect`: read it from what the script passed.
  const redirect = init?.redirect ?? (input instanceof Request ? input.redirect : undefined);
  if (redirect === 'manual') headers.set(REDIRECT, 'manual');
  else headers.delete(REDIRECT);
  const response = await engineFetch(request.url, {
    method: request.method,
    headers,
    body: request.body,
    signal: request.signal,
  });
  const code = response.headers.get(BINDING_ERROR);
  if (code !== null) throw proxyError(code);
  // An upgrade: its body is the upgraded connection (the engine gives a 101 none).
  if (response.headers.get(STATUS) === '101') {
    Object.defineProperty(response, 'status', { value: 101 });
    Object.defineProperty(response, 'ok', { value: false });
  }
  return response;
}

// A fetch that no binding owns is refused (http_request_denied), with the code.
globalThis.fetch = function fetch(input, init) {
  return taggedFetch('', input, init);
};

class Fetcher {
  #name;
  constructor(name) {
    this.#name = name;
  }

  fetch(input, init) {
    return taggedFetch(this.#name, input, init);
  }

  connect(address, options = {}) {
    if (options.secureTransport && options.secureTransport !== 'off') {
      throw new TypeError('connect(): only plaintext sockets (secureTransport: "off"); TLS is the script\'s own business over the socket');
    }
    const text = typeof address === 'string' ? address
      : address.hostname.includes(':') ? `[${address.hostname}]:${address.port}`
      : `${address.hostname}:${address.port}`;
    return new Socket(this.#name, text);
  }
}

// Plays the error of a failed stream operation back as its code.
function streamError(failure) {
  const payload = failure?.payload;
  if (payload?.tag === 'last-operation-failed') {
    return proxyError(wireName(httpErrorCode(payload.val)));
  }
  return proxyError('connection_terminated');
}

class Socket {
  #input;
  #output;
  #closed;
  #resolveClosed;
  constructor(binding, address) {
    this.#closed = new Promise((resolve, reject) => {
      this.#resolveClosed = { resolve, reject };
    });
    let pending;
    try {
      pending = vpcConnect(binding, address);
    } catch (failure) {
      const error = proxyError(wireName(failure?.payload));
      this.opened = Promise.reject(error);
      this.#resolveClosed.reject(error);
      this.opened.catch(() => {});
      this.#closed.catch(() => {});
      this.readable = new ReadableStream({ start: (c) => c.error(error) });
      this.writable = new WritableStream({ start: (c) => c.error(error) });
      return;
    }
    let opened;
    const open = () => {
      if (opened) return opened;
      pending.subscribe().block();
      const result = pending.get();
      if (result.tag === 'err') opened = { error: proxyError(wireName(result.val)) };
      else [this.#input, this.#output] = result.val, opened = { address };
      return opened;
    };
    this.opened = Promise.resolve().then(() => {
      const state = open();
      if (state.error) throw state.error;
      return { remoteAddress: address, localAddress: '' };
    });
    this.readable = new ReadableStream({
      pull: (controller) => {
        const state = open();
        if (state.error) return controller.error(state.error);
        try {
          controller.enqueue(this.#input.blockingRead(65536n));
        } catch (failure) {
          if (failure?.payload?.tag === 'closed') {
            controller.close();
            this.#resolveClosed.resolve();
          } else {
            const error = streamError(failure);
            controller.error(error);
            this.#resolveClosed.reject(error);
          }
        }
      },
    }, { highWaterMark: 0 });
    this.writable = new WritableStream({
      write: (chunk) => {
        const state = open();
        if (state.error) throw state.error;
        const bytes = chunk instanceof Uint8Array ? chunk : new TextEncoder().encode(String(chunk));
        try {
          for (let at = 0; at < bytes.length; at += 4096) {
            this.#output.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
          }
        } catch (failure) {
          throw streamError(failure);
        }
      },
      close: () => this.#endWrites(),
    });
    this.#closed.catch(() => {});
  }

  get closed() {
    return this.#closed;
  }

  // Half-close: the destination sees FIN; its answer still reads.
  #endWrites() {
    const output = this.#output;
    this.#output = undefined;
    if (output) {
      try { output.blockingFlush(); } catch {}
      output[Symbol.dispose]?.();
    }
  }

  async close() {
    this.#endWrites();
    const input = this.#input;
    this.#input = undefined;
    input?.[Symbol.dispose]?.();
    this.#resolveClosed.resolve();
  }
}

// The script's bindings (`vpc_services` and `vpc_networks`), written in by the build.
const env = Object.freeze(Object.fromEntries(
  "wvpc:bindings".map((name) => [name, new Fetcher(name)]),
));

addEventListener('fetch', (event) => {
  const ctx = {
    waitUntil: (promise) => event.waitUntil(promise),
    passThroughOnException() {},
  };
  event.respondWith((async () => {
    try {
      const response = await worker.fetch(event.request, env, ctx);
      if (!(response instanceof Response)) {
        throw new TypeError(`the fetch handler returned ${response === null ? 'null' : typeof response}, not a Response`);
      }
      return response;
    } catch (failure) {
      console.error(`Uncaught ${failure?.stack ? `${failure}\n${failure.stack}` : failure}`);
      return new Response('the script threw an exception (see its log)', {
        status: 500,
        headers: { 'content-type': 'text/plain; charset=utf-8' },
      });
    }
  })());
});

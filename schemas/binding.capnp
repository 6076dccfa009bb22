# Runtime <-> binding-worker: one call per `env.binding(NAME).fetch(request)` (or
# `.connect(address)`) of a script.
#
# The runtime calls VpcBinding.fetch with the binding context, the request head and a
# ResponseReceiver it implements. The binding-worker answers at once with a ByteStream for the
# request body (so the script's body streams while the origin is being reached — a call that
# waited for the response head would deadlock against an origin that reads the whole body
# first), then calls ResponseReceiver.deliver exactly once with the response head or an error
# code, and streams the response body into the ByteStream that deliver returns. Both bodies are
# flow-controlled with a bounded window (see ByteStream).
#
# Failures are codes (ErrorCode), never text. Ordinals are never renumbered; new enum values and
# fields are appended.
@0xe9e82ccf568c8540;

interface VpcBinding {
  fetch @0 (context :BindingContext, head :RequestHead, response :ResponseReceiver,
             takesInlineBody :Bool, inlineRequestBody :Data, requestBodyComplete :Bool)
        -> (requestBody :ByteStream, takesInlineRequestBody :Bool);
  # Starts one request. `requestBody` must be ended (or aborted) by the caller, even when the
  # request has no body — unless the caller set `requestBodyComplete`: then
  # `inlineRequestBody` is the whole request body, no `requestBody` is returned, and nothing
  # is streamed (saving the end call, its return and the stream's release). A caller sets it
  # only on a connection whose binding-worker answered `takesInlineRequestBody` to an earlier
  # fetch (binding-workers from before it leave that false, and would wait for an end()).
  # `takesInlineBody`: the caller reads `deliver`'s `inlineBody` (runtimes from before it
  # leave it false and always get the body as a stream).

  connect @1 (context :BindingContext, address :Text, receiver :SocketReceiver)
          -> (toDestination :ByteStream);
  # Opens a raw TCP connection through the binding (`env.NET.connect(address)` in a script):
  # no HTTP anywhere on the way, the bytes are piped untouched.
  # - `address`: for a network binding (`tunnelId` / `networkId` set) the destination,
  #   `host:port` (`[v6]:port` for an IPv6 literal; a hostname is resolved through the
  #   tunnel); for a service binding it must be empty: the service's `tcp_port` is dialled.
  # - The binding-worker answers at once with `toDestination`, the script's bytes towards the
  #   destination: chunks written before the connection is open wait (within the stream's
  #   window). `end()` half-closes (FIN towards the destination; the other direction keeps
  #   going); `abort()` resets the connection.
  # - Then it calls `receiver.opened` exactly once: with an error (the connection never
  #   opened; what the caller wrote is dropped), or opened, and streams the destination's
  #   bytes into the returned `fromDestination`: `end()` is the destination's FIN, `abort()`
  #   a reset or broken path (connectionTerminated, …), never a silent end.
}

interface SocketReceiver {
  opened @0 (result :ConnectResult) -> (fromDestination :ByteStream);
  # Called once per connect. For an error result the returned stream is ignored (may be null).
}

struct ConnectResult {
  union {
    unspecified @0 :Void; # never set on purpose: catches a forgotten choice
    opened @1 :Void;
    error @2 :WireError;
  }
}

interface ResponseReceiver {
  deliver @0 (result :FetchResult, inlineBody :Data, bodyComplete :Bool)
        -> (body :ByteStream);
  # Called once per fetch. For an error result the returned `body` is ignored (may be null).
  # `bodyComplete`: `inlineBody` is the whole response body (only when the fetch said
  # `takesInlineBody`, and only for a small body already read when the head is delivered);
  # then no `body` is returned and nothing is streamed, saving the write and end calls.
}

interface ByteStream {
  # One body. Calls are taken in the order they were made; flow control is ours
  # (wvpc_schemas::byte_stream_flow), not capnp's `-> stream`, whose per-capability state lives
  # as long as the connection.
  write @0 (bytes :Data);
  # One chunk (at most 64 KiB). Returns once the receiver's reader has taken the chunk. The
  # writer keeps at most 256 KiB unanswered and then waits for the oldest answers; a receiver
  # refuses a writer with more than 512 KiB unread.
  end @1 ();
  # Clean end of the stream, after the chunks written before it. Returns once queued.
  abort @2 (error :WireError);
  # The stream broke; the receiver must surface `error` (e.g. http_response_incomplete) after
  # the chunks it already took.
}

struct BindingContext {
  serviceId @0 :Text;   # VPC service UUID the binding points at (routing uses only this);
                        # empty for a vpc_networks binding
  script @1 :Text;      # script name, for logs and authorization
  account @2 :Text;     # account id that owns the script
  requestId @3 :Text;   # the incoming request's id; appears in every hop's logs
  binding @4 :Text;     # binding name as declared in vpc_services / vpc_networks, for logs
  tunnelId @5 :Text;    # a vpc_networks binding by tunnel_id: the tunnel (serviceId empty)
  networkId @6 :Text;   # a vpc_networks binding by network_id: "cf1:network" or
                        # "cf1:vnet:<uuid>" (serviceId empty). With tunnelId or networkId set,
                        # the URL's host and port are the destination (defaults 80 / 443).
  traceParent @7 :Text; # W3C traceparent of the caller's span, when its spans are exported;
                        # empty otherwise (and from runtimes before it)
}

struct Header {
  name @0 :Text;
  value @1 :Data;       # header values are bytes, not necessarily UTF-8
}

struct RequestHead {
  method @0 :Text;
  url @1 :Text;         # absolute URL as the script gave it; host -> Host (and SNI), scheme -> port
  headers @2 :List(Header);  # at most 4096 (MAX_HEAD_HEADERS), else httpRequestError
}

struct ResponseHead {
  status @0 :UInt16;
  headers @1 :List(Header);  # at most 4096, else httpResponseHeaderSectionSize
}

struct FetchResult {
  union {
    unspecified @0 :Void; # never set on purpose: catches a forgotten choice
    response @1 :ResponseHead;
    error @2 :WireError;
  }
}

struct WireError {
  code @0 :ErrorCode;
  rcode @1 :Text;       # for dnsError: the DNS rcode name (NXDOMAIN, SERVFAIL, ...); else empty
  details @2 :Text;     # human-oriented, safe to show the script author; never parsed
}

enum ErrorCode {
  # RFC 9209 Proxy-Status error types, plus rateLimited. Same order as wvpc_errors::ErrorCode.
  dnsTimeout @0;
  dnsError @1;
  destinationNotFound @2;
  destinationUnavailable @3;
  destinationIpProhibited @4;
  destinationIpUnroutable @5;
  connectionRefused @6;
  connectionTerminated @7;
  connectionTimeout @8;
  connectionReadTimeout @9;
  connectionWriteTimeout @10;
  connectionLimitReached @11;
  tlsProtocolError @12;
  tlsCertificateError @13;
  tlsAlertReceived @14;
  httpRequestError @15;
  httpRequestDenied @16;
  httpResponseIncomplete @17;
  httpResponseHeaderSectionSize @18;
  httpResponseHeaderSize @19;
  httpResponseBodySize @20;
  httpResponseTimeout @21;
  httpUpgradeFailed @22;
  httpProtocolError @23;
  proxyInternalResponse @24;
  proxyInternalError @25;
  proxyConfigurationError @26;
  proxyLoopDetected @27;
  rateLimited @28;
}

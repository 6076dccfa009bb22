# Tunnel data streams, cloudflared-compatible (its quic_metadata_protocol.capnp).
#
# A data stream is a QUIC bidirectional stream opened by the edge (iris). It starts with a
# 6-byte signature, the ASCII version "01", and one unpacked ConnectRequest message; the
# connector answers with the same preamble and one ConnectResponse, then the stream is a raw
# byte pipe. Layouts and ordinals must match cloudflared exactly; struct ids are cloudflared's.
@0xb29021ef7421cc32;

struct ConnectRequest @0xc47116a1045e4061 {
  dest @0 :Text;                # for tcp: a literal "ip:port" (never a hostname)
  type @1 :ConnectionType;
  metadata @2 :List(Metadata);  # FlowID, HttpHeader:<name>, ...
}

enum ConnectionType @0xc52e1bac26d379c8 {
  http @0;
  websocket @1;
  tcp @2;
}

struct Metadata @0xe1446b97bfd1cd37 {
  key @0 :Text;
  val @1 :Text;
}

struct ConnectResponse @0xb1032ec91cef8727 {
  error @0 :Text;               # empty on success; cloudflared puts text here. Our connector
                                # also sends the code as metadata key "ProxyStatusError".
  metadata @1 :List(Metadata);  # FlowConnectRateLimited=true when the flow limiter refused
}

//! The seed corpus: real messages of each format, made with the project's own encoders (the
//! bytes peers and users really send), plus a few hand-written files (configs, uploads).
//! `wvpc-fuzz --write-seeds` writes them to `fuzz/corpus/<target>/seed-<name>`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use uuid::Uuid;
use wvpc_errors::{ErrorCode, ProxyError};
use wvpc_schemas::binding_capnp::{vpc_binding, wire_error};
use wvpc_tunnel::datagram::{
    RegistrationResponse, RegistrationStatus, STATUS_DESTINATION_PROHIBITED, SessionRegistration,
    encode_payload,
};
use wvpc_tunnel::preamble::{DATA_STREAM_PREAMBLE, RPC_STREAM_SIGNATURE};
use wvpc_tunnel::{
    ConnectRequest, ConnectResponse, Credentials, Metadata, RequestId, StreamType,
    VIRTUAL_DNS_RESOLVER, datagram_v2,
};

/// One seed: target, file name (without the `seed-` prefix), content.
pub type Seed = (&'static str, String, Vec<u8>);

const DNS_ID: u16 = 0x1234;
const SERVICE: &str = "0199d9b2-6a5c-7a3e-9d3c-3f1d2b4c5a6e";

fn name() -> Name {
    Name::from_str(crate::targets::dns::NAME).expect("a valid name")
}

fn dns_query(record_type: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = DNS_ID;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(), record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message.to_vec().expect("a query encodes")
}

fn dns_response(record_type: RecordType, build: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut message = Message::response(DNS_ID, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.recursion_available = true;
    message.add_query(Query::query(name(), record_type));
    build(&mut message);
    message.to_vec().expect("a response encodes")
}

fn dns_seeds() -> Vec<(String, Vec<u8>)> {
    let v4 = |m: &mut Message| {
        for last in [5, 6, 7] {
            m.add_answer(Record::from_rdata(
                name(),
                60,
                RData::A(A(Ipv4Addr::new(10, 0, 0, last))),
            ));
        }
    };
    let v6 = |m: &mut Message| {
        m.add_answer(Record::from_rdata(
            name(),
            30,
            RData::AAAA(AAAA(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5))),
        ));
    };
    let alias = |m: &mut Message| {
        let target = Name::from_str("real.internal.").expect("a valid name");
        m.add_answer(Record::from_rdata(
            name(),
            5,
            RData::CNAME(CNAME(target.clone())),
        ));
        m.add_answer(Record::from_rdata(
            target,
            600,
            RData::A(A(Ipv4Addr::new(10, 0, 0, 9))),
        ));
    };
    let nxdomain = |m: &mut Message| {
        m.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(
            Name::from_str("ns.internal.").expect("a valid name"),
            Name::from_str("admin.internal.").expect("a valid name"),
            1,
            60,
            60,
            600,
            10,
        );
        m.add_authority(Record::from_rdata(
            Name::from_str("internal.").expect("a valid name"),
            3600,
            RData::SOA(soa),
        ));
    };
    let truncated = |m: &mut Message| m.metadata.truncation = true;
    let servfail = |m: &mut Message| m.metadata.response_code = ResponseCode::ServFail;
    let framed = |message: Vec<u8>| {
        let mut out = u16::try_from(message.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&message);
        out
    };
    vec![
        ("a".into(), dns_response(RecordType::A, v4)),
        ("aaaa".into(), dns_response(RecordType::AAAA, v6)),
        ("cname".into(), dns_response(RecordType::A, alias)),
        ("nxdomain-soa".into(), dns_response(RecordType::A, nxdomain)),
        ("nodata".into(), dns_response(RecordType::AAAA, |_| {})),
        ("truncated".into(), dns_response(RecordType::A, truncated)),
        ("servfail".into(), dns_response(RecordType::A, servfail)),
        ("query".into(), dns_query(RecordType::A)),
        ("tcp-a".into(), framed(dns_response(RecordType::A, v4))),
        (
            "tcp-aaaa".into(),
            framed(dns_response(RecordType::AAAA, v6)),
        ),
    ]
}

fn fetch_call(method: &str, url: &str, headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    {
        let mut params = message.init_root::<vpc_binding::fetch_params::Builder<'_>>();
        let mut context = params.reborrow().init_context();
        context.set_service_id(SERVICE);
        context.set_script("proxy");
        context.set_account("0123456789abcdef0123456789abcdef");
        context.set_request_id("4f7d6c1e2a3b4c5d");
        context.set_binding("API");
        let mut head = params.init_head();
        head.set_method(method);
        head.set_url(url);
        let mut list = head.init_headers(u32::try_from(headers.len()).expect("few"));
        for (i, (name, value)) in headers.iter().enumerate() {
            let mut entry = list.reborrow().get(u32::try_from(i).expect("few"));
            entry.set_name(*name);
            entry.set_value(value);
        }
    }
    capnp::serialize::write_message_to_words(&message)
}

fn wire_error_message(err: &ProxyError) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    wvpc_schemas::write_wire_error(message.init_root::<wire_error::Builder<'_>>(), err);
    capnp::serialize::write_message_to_words(&message)
}

fn upload(metadata: &str, module: &[u8]) -> Vec<u8> {
    let boundary = "wvpc-5b1f0e2c9d8a4b7c8e6f5a4b3c2d1e0f";
    let mut body = format!(
        "multipart/form-data; boundary={boundary}\n--{boundary}\r\nContent-Disposition: form-data; \
         name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\n\
         Content-Disposition: form-data; name=\"proxy.wasm\"; filename=\"proxy.wasm\"\r\n\
         Content-Type: application/wasm\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(module);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut out: Vec<Seed> = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_owned(), bytes));
    };
    let id = RequestId([0x5a; 16]);

    // datagram v3
    let query = dns_query(RecordType::A);
    let reg = |dest: SocketAddr, payload: &[u8]| {
        SessionRegistration {
            request_id: id,
            dest,
            idle: Duration::from_secs(30),
            traced: false,
            payload: Bytes::copy_from_slice(payload),
        }
        .encode()
        .expect("a small registration encodes")
        .to_vec()
    };
    add(
        "datagram_v3",
        "registration-v4",
        reg("10.0.0.53:53".parse().expect("addr"), b""),
    );
    add(
        "datagram_v3",
        "registration-v6-bundled",
        reg(VIRTUAL_DNS_RESOLVER, &query),
    );
    add(
        "datagram_v3",
        "payload",
        encode_payload(id, &query).expect("small").to_vec(),
    );
    for (name, status, message) in [
        ("response-ok", RegistrationStatus::Ok, ""),
        (
            "response-too-many",
            RegistrationStatus::TooManyActiveFlows,
            "too many flows",
        ),
        (
            "response-prohibited",
            RegistrationStatus::Other(STATUS_DESTINATION_PROHIBITED),
            "10.0.0.1:53 is not allowed",
        ),
    ] {
        let resp = RegistrationResponse {
            request_id: id,
            status,
            message: message.into(),
        };
        add("datagram_v3", name, resp.encode().to_vec());
    }
    // An ICMP echo request in an IPv4 packet.
    let mut icmp = vec![
        0x02, 0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    icmp.extend_from_slice(&[8, 0, 0xf7, 0xfe, 0, 1, 0, 0]);
    add("datagram_v3", "icmp", icmp);

    // datagram v2
    add(
        "datagram_v2",
        "udp",
        datagram_v2::encode_udp(id, &query).expect("small").to_vec(),
    );
    add(
        "datagram_v2",
        "udp-empty",
        datagram_v2::encode_udp(id, b"").expect("small").to_vec(),
    );
    add("datagram_v2", "ip", vec![0x45, 0, 0, 20, 1]);
    add("datagram_v2", "tracing", vec![0xaa, 0xbb, 3]);

    // stream preambles
    let mut data = DATA_STREAM_PREAMBLE.to_vec();
    data.extend_from_slice(b"body");
    add("stream_preamble", "data", data);
    add("stream_preamble", "rpc", RPC_STREAM_SIGNATURE.to_vec());
    add("stream_preamble", "http", b"GET / HTTP/1.1\r\n".to_vec());

    // ConnectRequest (after the signature) and ConnectResponse
    let tcp = ConnectRequest::tcp("10.0.0.5:5432".parse().expect("addr"), "flow-1");
    let mut wire = tcp.encode()[6..].to_vec();
    wire.extend_from_slice(b"proxied bytes");
    add("connect_request", "tcp", wire);
    let dns = ConnectRequest::tcp(VIRTUAL_DNS_RESOLVER, "flow-2");
    add("connect_request", "tcp-dns-v6", dns.encode()[6..].to_vec());
    let http = ConnectRequest {
        dest: "http://api.internal/hello".into(),
        stream_type: StreamType::Http,
        metadata: vec![
            Metadata::new("HttpMethod", "GET"),
            Metadata::new("HttpHost", "api.internal"),
            Metadata::new("HttpHeader:Accept", "*/*"),
            Metadata::new("cf-trace-id", "1234:5678:0:1"),
        ],
    };
    add("connect_request", "http", http.encode()[6..].to_vec());
    add("connect_response", "ok", ConnectResponse::ok().encode());
    let refused = ProxyError::new(ErrorCode::ConnectionRefused).with_details("dial 10.0.0.1:80");
    add(
        "connect_response",
        "refused",
        ConnectResponse::failure(&refused).encode(),
    );
    add(
        "connect_response",
        "rate-limited",
        ConnectResponse::failure(&ProxyError::new(ErrorCode::RateLimited)).encode(),
    );
    let cloudflared = ConnectResponse {
        error: "unable to dial tcp to origin 127.0.0.2:44841: dial tcp 127.0.0.2:44841: \
                connect: connection refused"
            .into(),
        metadata: vec![],
    };
    add("connect_response", "cloudflared-text", cloudflared.encode());

    // The platform handshake as a runtime opens it: hello (magic, version, nonce), proof.
    let mut hello = b"wvpc-bnd\x01".to_vec();
    hello.extend_from_slice(&[0x42; 32]);
    let mut with_proof = hello.clone();
    with_proof.extend_from_slice(&[0x17; 32]);
    add("binding_handshake", "hello-and-proof", with_proof);
    add("binding_handshake", "hello", hello);
    add(
        "binding_handshake",
        "http",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    );
    add(
        "binding_handshake",
        "capnp",
        vec![0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
    );

    // VpcBinding.fetch calls and WireErrors
    add(
        "binding_fetch",
        "get",
        fetch_call("GET", "http://api.internal/hello", &[("accept", b"*/*")]),
    );
    add(
        "binding_fetch",
        "post",
        fetch_call(
            "POST",
            "https://API.internal:8443/v1/items?q=1#frag",
            &[
                ("content-type", b"application/json"),
                ("content-length", b"13"),
                ("transfer-encoding", b"chunked"),
                ("x-binary", b"\xff\x00"),
            ],
        ),
    );
    add(
        "binding_fetch",
        "websocket",
        fetch_call(
            "GET",
            "http://[fd00::5]:81/ws",
            &[
                ("connection", b"keep-alive, Upgrade, x-hop"),
                ("upgrade", b"websocket"),
                ("x-hop", b"1"),
                ("proxy-authorization", b"secret"),
                ("host", b"other"),
            ],
        ),
    );
    add(
        "binding_fetch",
        "relative-url",
        fetch_call("GET", "/relative", &[]),
    );
    add(
        "binding_fetch",
        "wire-error",
        wire_error_message(&ProxyError::dns("NXDOMAIN").with_details("api.internal has NXDOMAIN")),
    );

    // DNS answers
    for (name, bytes) in dns_seeds() {
        add("dns_answer", &name, bytes);
    }

    // Proxy-Status
    for (name, value) in [
        (
            "dns",
            ProxyError::dns("NXDOMAIN")
                .with_details("name \"api.internal\" \\ gone")
                .to_proxy_status("iris"),
        ),
        (
            "refused",
            ProxyError::new(ErrorCode::ConnectionRefused).to_proxy_status("iris"),
        ),
        (
            "chained",
            r#"origin-cache, iris; error=connection_refused; details="a, b; c""#.to_owned(),
        ),
        ("unknown", "iris; error=bogus; next-hop=\"x\"".to_owned()),
    ] {
        add("proxy_status", name, value.into_bytes());
    }

    // wrangler configs
    let jsonc = format!(
        "{{\n  \"name\": \"proxy\",\n  \"main\": \"script.wasm\",\n  \"compatibility_date\": \"2025-01-01\",\n  \
         // bindings\n  \"vpc_services\": [{{ \"binding\": \"API\", \"service_id\": \"{SERVICE}\" }},\n    \
         {{ \"binding\": \"DB\", \"service\": \"api\", \"remote\": true }}],\n  \
         \"routes\": [\"api.example.com/*\"],\n  /* limits */ \"limits\": {{ \"cpu_ms\": 50 }},\n}}\n"
    );
    add("wrangler_config", "full.jsonc", jsonc.into_bytes());
    add(
        "wrangler_config",
        "minimal.toml",
        format!(
            "name = \"proxy\"\nmain = \"script.wasm\"\nroutes = [\"api.example.com/*\"]\n\n\
             [[vpc_services]]\nbinding = \"API\"\nservice_id = \"{SERVICE}\"\n\n[limits]\ncpu_ms = 50\n"
        )
        .into_bytes(),
    );
    add(
        "wrangler_config",
        "invalid.jsonc",
        b"{ \"name\": \"bad name!\", \"main\": \"missing.wasm\", \"vpc_services\": [{\"binding\": \"1x\", \"servce_id\": 3}], \"limits\": {\"cpu_ms\": -1} }".to_vec(),
    );
    add(
        "wrangler_config",
        "syntax.toml",
        b"name = \"proxy\nmain = 3\n[limits\n".to_vec(),
    );

    // service objects
    let tunnel = Uuid::from_u128(7);
    for (name, json) in [
        (
            "hostname",
            format!(
                r#"{{"name":"api","type":"http","http_port":8080,"https_port":8443,"host":{{"hostname":"api.internal","resolver_network":{{"tunnel_id":"{tunnel}","resolver_ips":["10.0.0.53","[fd00::53]:5353"]}}}},"tls_settings":{{"cert_verification_mode":"verify_ca"}}}}"#
            ),
        ),
        (
            "ips",
            format!(
                r#"{{"name":"db","type":"tcp","tcp_port":5432,"app_protocol":"postgresql","host":{{"ipv4":"10.0.0.5","ipv6":"fd00::5","network":{{"tunnel_id":"{tunnel}"}}}}}}"#
            ),
        ),
        (
            "fetched",
            format!(
                r#"{{"service_id":"{SERVICE}","created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z","name":"api","type":"http","http_port":80,"https_port":null,"host":{{"ipv4":"10.0.0.5","network":{{"tunnel_id":"{tunnel}"}}}},"tls_settings":null}}"#
            ),
        ),
        (
            "invalid",
            r#"{"name":"","type":"ftp","http_port":70000,"host":{"hostname":"a..b","ipv4":"1.2.3","resolver_network":{"tunnel_id":"x","resolver_ips":[7]}}}"#.to_owned(),
        ),
    ] {
        add("service_json", name, json.into_bytes());
    }

    // script uploads, as `wvpc deploy` sends them
    let module = b"\0asm\x0d\x00\x01\x00";
    add(
        "script_upload",
        "deploy",
        upload(
            &format!(
                r#"{{"main_module":"proxy.wasm","bindings":[{{"type":"vpc_service","name":"API","service_id":"{SERVICE}"}},{{"type":"vpc_service","name":"DB","service":"db"}}],"routes":["api.example.com/*",{{"pattern":"shop.example.com","custom_domain":true}},{{"pattern":"*.example.org/v1/*","zone_name":"example.org"}}],"workers_dev":false,"limits":{{"cpu_ms":50}}}}"#
            ),
            module,
        ),
    );
    add("script_upload", "minimal", upload("{}", module));
    add(
        "script_upload",
        "invalid",
        upload(
            r#"{"main_module":7,"bindings":[{"type":"kv"},{"type":"vpc_service"}],"routes":"x","workers_dev":"yes","limits":[]}"#,
            b"not wasm",
        ),
    );

    // tunnel credentials
    let credentials = Credentials::mint("0123456789abcdef0123456789abcdef", tunnel);
    add("credentials", "token", credentials.to_token().into_bytes());
    add(
        "credentials",
        "file",
        credentials.to_file_json().into_bytes(),
    );
    let mut with_endpoint = credentials.clone();
    with_endpoint.endpoint = "us".into();
    add(
        "credentials",
        "token-endpoint",
        with_endpoint.to_token().into_bytes(),
    );

    // API bearer tokens
    add(
        "api_token",
        "shape",
        b"wvpc_q1Wc8dyvdXp5T0hbZ2UyD0c8y3YrOe1pQ0bE2kQ3zVY".to_vec(),
    );
    add("api_token", "empty", Vec::new());
    add("api_token", "bearer-prefix", b"Bearer wvpc_x".to_vec());

    out
}

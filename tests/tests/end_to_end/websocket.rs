//! A WebSocket upgrade passes through the real path: the script
//! (`sdk/examples/websocket.rs`) asks for `Upgrade: websocket`, the origin answers `101`, and
//! frames flow both ways over the upgraded connection (script → origin in the request body,
//! origin → script in the response body).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wvpc_directory::{HostInput, ServiceInput};
use wvpc_tests::real::{RealWorld, WorldOptions};
use wvpc_tests::{client, guests, trace_init, within, within_build};

/// What the WebSocket origin saw.
#[derive(Debug, Default)]
struct Seen {
    head: String,
    texts: Vec<String>,
    closed_by_client: bool,
}

/// A WebSocket echo origin (raw TCP): answers the upgrade with 101, echoes each text frame,
/// answers a close frame with its own and hangs up.
async fn websocket_origin() -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_websocket(stream, Arc::clone(&record)));
        }
    });
    (port, seen)
}

async fn serve_websocket(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buffered = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffered.extend_from_slice(&buf[..n]),
        }
    };
    seen.lock().unwrap().head = String::from_utf8_lossy(&buffered[..head_end]).to_lowercase();
    let answer = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                  sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let mut pending = buffered.split_off(head_end);
    loop {
        while let Some((opcode, payload, used)) = masked_frame(&pending) {
            pending.drain(..used);
            match opcode {
                0x1 => {
                    seen.lock()
                        .unwrap()
                        .texts
                        .push(String::from_utf8_lossy(&payload).into_owned());
                    let _ = stream.write_all(&server_frame(0x1, &payload)).await;
                }
                0x8 => {
                    seen.lock().unwrap().closed_by_client = true;
                    let _ = stream.write_all(&server_frame(0x8, &payload)).await;
                    let _ = stream.shutdown().await;
                    return;
                }
                _ => {}
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// A complete masked client frame at the start of `bytes`: (opcode, unmasked payload, length).
fn masked_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if bytes.len() < 2 || bytes[1] & 0x80 == 0 {
        return None;
    }
    let (len, mut at) = match bytes[1] & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])),
            4,
        ),
        127 => return None, // not needed here
        n => (usize::from(n), 2),
    };
    let mask: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = bytes.get(at..at + len)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Some((bytes[0] & 0x0f, unmasked, at + len))
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_and_frames_flow_both_ways() {
    websocket_exchange(guests::WEBSOCKET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_script_passes_a_websocket_upgrade_through_too() {
    if !guests::javascript_builds() {
        return;
    }
    websocket_exchange(guests::WEBSOCKET_JS).await;
}

/// `script` exchanges WebSocket frames with the origin through its binding.
async fn websocket_exchange(script: &'static str) {
    trace_init();
    let world = within_build(
        "starting the real path",
        RealWorld::start_with(WorldOptions {
            script,
            ..WorldOptions::default()
        }),
    )
    .await
    .expect("starting the real path");
    let (port, seen) = websocket_origin().await;
    let mut service = ServiceInput::http(
        "ws",
        HostInput::ips(Some(Ipv4Addr::LOCALHOST), None, world.tunnel_id),
    );
    service.http_port = Some(i64::from(port));
    world
        .stack
        .directory
        .replace_service(world.service_id, &service)
        .unwrap();
    within(
        "iris routes the changed service",
        world.stack.routes_current(),
    )
    .await
    .unwrap();

    let reply = within(
        "the WebSocket exchange",
        client::get(world.stack.script_addr, "/echo/hello-through-the-tunnel"),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{} (the origin saw {:?})",
        reply.text(),
        seen.lock().unwrap()
    );
    assert_eq!(reply.text(), "echo: hello-through-the-tunnel");

    let seen = seen.lock().unwrap();
    assert!(
        seen.head.starts_with("get /ws http/1.1\r\n"),
        "{}",
        seen.head
    );
    for header in [
        "upgrade: websocket\r\n",
        "connection: upgrade\r\n",
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n",
        "sec-websocket-version: 13\r\n",
        "host: api.internal\r\n",
    ] {
        assert!(
            seen.head.contains(header),
            "the origin saw no {header:?}: {}",
            seen.head
        );
    }
    assert_eq!(seen.texts, ["hello-through-the-tunnel"]);
    assert!(seen.closed_by_client, "the close frame reached the origin");
}

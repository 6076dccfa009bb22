//! Example script: a WebSocket exchange with a VPC Service, through the binding `API`.
//!
//! `GET /echo/<text>` opens `http://api.internal/ws` with `Upgrade: websocket`, sends `<text>`
//! as one masked text frame followed by a close frame, and, once the origin answered
//! `101 Switching Protocols`, reads the origin's frames from the response body. It answers
//! `200 echo: <the origin's text frame>`; `502 <why>` otherwise (`ProxyError: <code>` when
//! the binding failed).
//!
//! The binding passes the upgrade through end to end: after the `101`, the request body is
//! what the script sends and the response body is what the origin sends. (This example sends
//! its frames up front and does not check `Sec-WebSocket-Accept`; it shows the plumbing, not
//! a full WebSocket client.)

use wvpc_sdk::{Body, Env, Handler, Request, Response};

struct WebSocketEcho;

/// A fixed `Sec-WebSocket-Key` (any 16 bytes, base64).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

impl Handler for WebSocketEcho {
    fn fetch(request: Request, env: &Env) -> Response {
        let Some(text) = request.path_with_query().strip_prefix("/echo/") else {
            return Response::new(404).with_body("use /echo/<text>");
        };
        let mut frames = client_frame(TEXT, text.as_bytes());
        frames.extend(client_frame(CLOSE, &1000u16.to_be_bytes()));
        let upgrade = Request::get("http://api.internal/ws")
            .with_header("connection", "Upgrade")
            .with_header("upgrade", "websocket")
            .with_header("sec-websocket-key", KEY)
            .with_header("sec-websocket-version", "13")
            .with_body(Body::from(frames));
        let response = match env.binding("API").fetch(upgrade) {
            Ok(response) => response,
            Err(err) => return Response::new(502).with_body(err.to_string()),
        };
        if response.status() != 101 {
            return Response::new(502).with_body(format!("no upgrade: {}", response.status()));
        }
        let received = match response.into_body().into_bytes() {
            Ok(bytes) => bytes,
            Err(err) => return Response::new(502).with_body(err.to_string()),
        };
        match server_frames(&received)
            .into_iter()
            .find(|(op, _)| *op == TEXT)
        {
            Some((_, payload)) => {
                Response::new(200).with_body(format!("echo: {}", String::from_utf8_lossy(&payload)))
            }
            None => Response::new(502).with_body("the origin sent no text frame"),
        }
    }
}

/// One final client frame (RFC 6455 §5.2): clients mask their payload.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend((n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend((n as u64).to_be_bytes());
        }
    }
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The (opcode, payload) of each complete unmasked server frame in `bytes`.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if bytes.len() < header + len {
            break;
        }
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

wvpc_sdk::export_handler!(WebSocketEcho);

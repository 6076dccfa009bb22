//! Example script: raw TCP through bindings (`connect()`), and fetches through a network
//! binding — a real protocol (Redis RESP) spoken over a [`Socket`].
//!
//! Every route names the binding (`binding=`) and, for a socket, the address (`addr=`:
//! `host:port` or `[v6]:port` through a `vpc_networks` binding, empty through a
//! `vpc_services` binding, which dials the service's `tcp_port`). Query values are
//! percent-decoded.
//!
//! | route | what it does | answer |
//! |---|---|---|
//! | `GET /redis?binding=DB&addr=…&key=k&value=v` | `PING`, `SET k v`, `GET k` in RESP on one connection | `200`, one line per reply: `PING +PONG`, `SET +OK`, `GET $v` (`-ERR …` for an error reply, `$nil` for a missing key) |
//! | `GET /fetch?binding=NET&url=http://10.0.0.5:8080/x` | fetches the URL through the binding | `200`, `<status>\n<body>` |
//! | `POST /echo?binding=X&addr=…` | writes the request body, half-closes, reads to the destination's FIN | `200`, the bytes that came back |
//! | `GET /open?binding=X&addr=…&count=N` | opens N sockets at once (all held to the end) | `200 opened N`, or `502 opened <k>; ProxyError: <code>` |
//! | `GET /stash?binding=X&addr=…` | opens a socket and keeps it in a global (for the next request) | `200 stashed` |
//! | `GET /stashed` | reads from the socket a previous request stashed | `200 read <n> bytes`, or `502 ProxyError: <code>` |
//!
//! Any failure of the binding answers `502 ProxyError: <code>` (the RFC 9209 type, e.g.
//! `connection_refused`, `destination_not_found` for a malformed address,
//! `proxy_configuration_error` for an undeclared binding).

use std::cell::RefCell;

use wvpc_sdk::{Env, Handler, ProxyError, Request, Response, Socket};

struct Sockets;

thread_local! {
    /// `/stash`'s socket, kept by the instance between requests.
    static STASHED: RefCell<Option<Socket>> = const { RefCell::new(None) };
}

impl Handler for Sockets {
    fn fetch(mut request: Request, env: &Env) -> Response {
        let target = request.path_with_query().to_owned();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let param = |name: &str| query_param(query, name);
        let binding = env.binding(&param("binding").unwrap_or_default());
        let addr = param("addr").unwrap_or_default();
        let outcome = match path {
            "/redis" => redis(
                binding.connect(&addr),
                &param("key").unwrap_or_else(|| "key".into()),
                &param("value").unwrap_or_else(|| "value".into()),
            ),
            "/fetch" => {
                let url = param("url").unwrap_or_default();
                binding.fetch(Request::get(url)).and_then(|response| {
                    let status = response.status();
                    let body = response.into_body().into_text()?;
                    Ok(format!("{status}\n{body}"))
                })
            }
            "/echo" => request.take_body().into_bytes().and_then(|body| {
                let mut socket = binding.connect(&addr)?;
                socket.write_all(&body)?;
                socket.shutdown_write()?;
                let mut back = Vec::new();
                socket.read_to_end(&mut back)?;
                Ok(String::from_utf8_lossy(&back).into_owned())
            }),
            "/open" => {
                let count: usize = param("count").and_then(|c| c.parse().ok()).unwrap_or(1);
                return open_many(&binding, &addr, count);
            }
            "/stash" => binding.connect(&addr).map(|socket| {
                STASHED.with(|s| *s.borrow_mut() = Some(socket));
                "stashed".to_owned()
            }),
            "/stashed" => match STASHED.with(|s| s.borrow_mut().take()) {
                None => return Response::new(404).with_body("nothing stashed"),
                Some(mut socket) => {
                    let mut buf = [0; 64];
                    socket.read(&mut buf).map(|n| format!("read {n} bytes"))
                }
            },
            _ => return Response::new(404).with_body("see the routes at the top of sockets.rs"),
        };
        match outcome {
            Ok(text) => Response::new(200).with_body(text),
            Err(err) => Response::new(502).with_body(err.to_string()),
        }
    }
}

/// `count` sockets opened at once, held until the response is made.
fn open_many(binding: &wvpc_sdk::Fetcher, addr: &str, count: usize) -> Response {
    let mut pending = Vec::new();
    for k in 0..count {
        match binding.start_connect(addr) {
            Ok(p) => pending.push(p),
            Err(err) => return Response::new(502).with_body(format!("opened {k}; {err}")),
        }
    }
    let mut open = Vec::new();
    for (k, p) in pending.into_iter().enumerate() {
        match p.wait() {
            Ok(socket) => open.push(socket),
            Err(err) => return Response::new(502).with_body(format!("opened {k}; {err}")),
        }
    }
    Response::new(200).with_body(format!("opened {}", open.len()))
}

/// `PING`, `SET key value`, `GET key` on one connection, each reply as a line.
fn redis(socket: Result<Socket, ProxyError>, key: &str, value: &str) -> Result<String, ProxyError> {
    let mut conn = Resp {
        socket: socket?,
        buffer: Vec::new(),
    };
    let mut out = String::new();
    for command in [vec!["PING"], vec!["SET", key, value], vec!["GET", key]] {
        conn.send(&command)?;
        let reply = conn.reply()?;
        out.push_str(&format!("{} {reply}\n", command[0]));
    }
    Ok(out)
}

/// A RESP (Redis protocol) client over a socket.
struct Resp {
    socket: Socket,
    /// Bytes read and not parsed yet.
    buffer: Vec<u8>,
}

impl Resp {
    /// Sends one command as an array of bulk strings.
    fn send(&mut self, args: &[&str]) -> Result<(), ProxyError> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg.as_bytes());
            frame.extend_from_slice(b"\r\n");
        }
        self.socket.write_all(&frame)?;
        self.socket.flush()
    }

    /// The next reply as text: `+PONG`, `-ERR …`, `:1`, `$value`, `$nil`, `*[…]`.
    fn reply(&mut self) -> Result<String, ProxyError> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" | "-" | ":" => Ok(line),
            "$" => match rest.parse::<i64>() {
                Ok(-1) => Ok("$nil".into()),
                Ok(len) if len >= 0 => {
                    let data = self.exactly(len as usize + 2)?;
                    Ok(format!(
                        "${}",
                        String::from_utf8_lossy(&data[..len as usize])
                    ))
                }
                _ => Ok(format!("unreadable reply {line:?}")),
            },
            "*" => {
                let count = rest.parse::<i64>().unwrap_or(0).max(0);
                let items = (0..count)
                    .map(|_| self.reply())
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(format!("*[{}]", items.join(", ")))
            }
            _ => Ok(format!("unreadable reply {line:?}")),
        }
    }

    /// One `\r\n`-terminated line, without the terminator.
    fn line(&mut self) -> Result<String, ProxyError> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            self.fill()?;
        }
    }

    fn exactly(&mut self, n: usize) -> Result<Vec<u8>, ProxyError> {
        while self.buffer.len() < n {
            self.fill()?;
        }
        Ok(self.buffer.drain(..n).collect())
    }

    /// Reads more; the server closing mid-reply is `connection_terminated`.
    fn fill(&mut self) -> Result<(), ProxyError> {
        let mut chunk = [0; 4096];
        match self.socket.read(&mut chunk)? {
            0 => Err(ProxyError::from(
                wvpc_sdk::wasip2::http::types::ErrorCode::ConnectionTerminated,
            )),
            n => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// The percent-decoded value of `name` in a query string (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

wvpc_sdk::export_handler!(Sockets);

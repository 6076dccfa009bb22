//! A stand-in private network for demos: an HTTP origin and a DNS server that resolves a
//! private name to it, both on loopback.
//!
//! ```text
//! private-network [--name api.internal] [--origin-ip 127.0.0.2] [--dns-listen 127.0.0.1:5353]
//! ```
//!
//! Prints `origin <ip:port>` and `dns <ip:port>` once both listen, then serves until killed.
//! Every request the origin receives is logged to stderr. SIGUSR1 stops the origin (its port
//! then refuses connections) while DNS keeps answering.

use std::net::{IpAddr, SocketAddr};

use wvpc_tests::dns::{DnsServer, DnsTable};
use wvpc_tests::origin::Origin;

struct Args {
    name: String,
    origin_ip: IpAddr,
    dns_listen: SocketAddr,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        name: "api.internal".into(),
        origin_ip: "127.0.0.2".parse().unwrap(),
        dns_listen: "127.0.0.1:5353".parse().unwrap(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => args.name = value,
            "--origin-ip" => {
                args.origin_ip = value
                    .parse()
                    .map_err(|_| format!("--origin-ip: {value:?} is not an IP"))?
            }
            "--dns-listen" => {
                args.dns_listen = value
                    .parse()
                    .map_err(|_| format!("--dns-listen: {value:?} is not ip:port"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !args.origin_ip.is_loopback() || !args.dns_listen.ip().is_loopback() {
        return Err("this demo network only binds loopback addresses".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let mut origin = Origin::start(&args.origin_ip.to_string())
        .await
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start the origin on {}: {e}", args.origin_ip);
            std::process::exit(1);
        });
    let table = DnsTable::new().with(&args.name, args.origin_ip);
    let dns = DnsServer::start_on(args.dns_listen, table)
        .await
        .unwrap_or_else(|e| {
            eprintln!(
                "error: cannot start the DNS server on {}: {e}",
                args.dns_listen
            );
            std::process::exit(1);
        });
    println!("origin {}", origin.addr);
    println!("dns {}", dns.addr);
    eprintln!(
        "private network: {} -> {} (DNS on {})",
        args.name, origin.addr, dns.addr
    );
    let mut reported = 0;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .expect("installing the SIGUSR1 handler");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => {
                origin.stop().await;
                eprintln!("origin stopped: {} now refuses connections", origin.addr);
            }
            _ = ticker.tick() => {
                for seen in origin.seen().iter().skip(reported) {
                    eprintln!("origin: {} {} (Host: {})", seen.method, seen.path, seen.host.as_deref().unwrap_or("-"));
                    reported += 1;
                }
            }
        }
    }
}

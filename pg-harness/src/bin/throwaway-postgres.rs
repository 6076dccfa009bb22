//! `throwaway-postgres`: a throwaway PostgreSQL server for scripts (`scripts/cluster`).
//! Prints `postgres <url>` once it serves an empty database, and runs until it is stopped;
//! however it stops (SIGTERM, SIGKILL), the server stops with it and its files are removed.

use std::io::Write as _;

fn main() {
    let server = match wvpc_pg_harness::PgServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("throwaway-postgres: {why}");
            std::process::exit(1);
        }
    };
    let url = server.create_database();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "postgres {url}");
    let _ = out.flush();
    // The server lives as long as this process: its guardian stops it when we are gone.
    loop {
        std::thread::park();
    }
}

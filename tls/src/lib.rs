//! TLS trust shared by the processes of workers-vpc, with rustls (ring) and rcgen.
//!
//! - [`verify`]: how a TLS client checks a server's certificate — the full WebPKI check, the
//!   chain without the name (`verify_ca`, `sslmode=verify-ca`), or only the handshake
//!   signature (`disabled`, libpq's `prefer` / `require` without a CA) — and private CA roots
//!   read from PEM. Used for https origins (binding-worker) and the PostgreSQL directory.
//! - [`ca`]: private certificate authorities: a self-signed CA or an operator's own, the
//!   leaves it issues, the check that a leaf verifies against it, and the PEM files kept in
//!   the state directory. Used for the edge CA (tunnel) and the relay CA (iris).

pub mod ca;
pub mod verify;

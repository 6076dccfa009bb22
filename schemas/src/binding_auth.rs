//! Mutual authentication of a runtime and a binding-worker with the platform secret: a
//! challenge–response handshake run on the TCP stream before capnp starts, and the secret
//! itself ([`PlatformSecret`]).
//!
//! ```text
//! runtime                                        binding-worker
//!   MAGIC ‖ VERSION ‖ Nr                    ──▶
//!                                           ◀──  MAGIC ‖ VERSION ‖ Nb
//!   HMAC(k, RUNTIME ‖ Nr ‖ Nb)              ──▶  checked (constant time)
//!                                           ◀──  ACCEPTED ‖ HMAC(k, BINDING_WORKER ‖ Nr ‖ Nb)
//!   checked; capnp starts                        (or REFUSED, then the connection closes)
//! ```
//!
//! `Nr` and `Nb` are 32 fresh random bytes per connection, so a proof recorded on one
//! connection is worth nothing on another, and the two role labels differ, so neither side's
//! proof can be reflected back as the other's. The runtime sends no request before the
//! binding-worker has proved that it knows the secret too: a rogue binding-worker cannot
//! harvest requests. The magic prefix makes any other peer (an HTTP client, a runtime without
//! the secret, a port scanner) fail fast with an error that says what it looked like; the
//! whole exchange is bounded by a timeout.
//!
//! This authenticates, it does not encrypt: what follows is plain capnp. Run binding traffic
//! on a network where nobody can read or relay it, or inside a tunnel that encrypts.

use std::fmt;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Default bound on the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// First bytes each side sends; anything else is not a peer.
const MAGIC: [u8; 8] = *b"wvpc-bnd";
/// Handshake version; a peer with another one is refused with both numbers in the error.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 32;
const HELLO_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
const PROOF_LEN: usize = 32;
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;
/// What each role's proof covers besides the nonces (distinct, so proofs cannot be reflected).
const RUNTIME_LABEL: &[u8] = b"wvpc binding handshake v1: runtime\0";
const BINDING_WORKER_LABEL: &[u8] = b"wvpc binding handshake v1: binding-worker\0";

/// Length of a platform secret, in bytes.
const SECRET_LEN: usize = 32;
/// Where [`PlatformSecret::load_or_create`] keeps the secret, under the state directory.
const SECRET_FILE: &str = "platform/secret";

/// Why a handshake failed. Every variant ends the connection; none is a bug of this process.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer did not complete the handshake in time.
    #[error("the peer did not complete the handshake within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before the handshake was over.
    #[error(
        "the peer closed the connection during the handshake (a peer started without the \
         platform secret does that)"
    )]
    Closed,
    /// Reading or writing the stream failed.
    #[error("the handshake failed: {0}")]
    Io(#[source] io::Error),
    /// The peer sent something that is not this handshake.
    #[error("the peer does not speak the binding handshake: it sent {0}")]
    NotAPeer(String),
    /// The peer speaks another version of the handshake.
    #[error("the peer speaks binding handshake version {theirs}, this build speaks {ours}")]
    Version {
        /// The peer's version.
        theirs: u8,
        /// This build's version.
        ours: u8,
    },
    /// (binding-worker) The runtime's proof was wrong: it holds another secret.
    #[error("the runtime does not hold this platform secret (its proof did not match)")]
    RuntimeProofRejected,
    /// (runtime) The binding-worker refused this runtime's proof: the two secrets differ.
    #[error("the binding-worker refused this runtime: the two hold different platform secrets")]
    RefusedByBindingWorker,
    /// (runtime) The binding-worker's proof was wrong: it does not hold this secret.
    #[error("the binding-worker does not hold this platform secret (its proof did not match)")]
    BindingWorkerProofRejected,
}

impl From<io::Error> for HandshakeError {
    fn from(err: io::Error) -> Self {
        if matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        ) {
            Self::Closed
        } else {
            Self::Io(err)
        }
    }
}

/// Runs the runtime's side of the handshake on `stream`, within `timeout`. On `Ok` the
/// binding-worker has proved it holds `secret` and capnp may start on the stream.
pub async fn handshake_as_runtime<S>(
    stream: &mut S,
    secret: &PlatformSecret,
    timeout: Duration,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, runtime_side(stream, secret))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

/// Runs the binding-worker's side of the handshake on `stream`, within `timeout`. On `Ok` the
/// runtime has proved it holds `secret`; on a wrong proof the runtime is told so before the
/// error returns (the caller then drops the stream).
pub async fn handshake_as_binding_worker<S>(
    stream: &mut S,
    secret: &PlatformSecret,
    timeout: Duration,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(timeout, binding_worker_side(stream, secret))
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

async fn runtime_side<S>(stream: &mut S, secret: &PlatformSecret) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ours = nonce()?;
    stream.write_all(&hello(&ours)).await?;
    stream.flush().await?;
    let theirs = read_hello(stream).await?;
    let proof = secret.proof(RUNTIME_LABEL, &ours, &theirs);
    stream.write_all(proof.as_ref()).await?;
    stream.flush().await?;
    let mut verdict = [0u8; 1];
    stream.read_exact(&mut verdict).await?;
    match verdict[0] {
        ACCEPTED => {}
        REFUSED => return Err(HandshakeError::RefusedByBindingWorker),
        other => {
            return Err(HandshakeError::NotAPeer(format!(
                "an unknown verdict byte {other:#04x}"
            )));
        }
    }
    let mut their_proof = [0u8; PROOF_LEN];
    stream.read_exact(&mut their_proof).await?;
    secret
        .verify(BINDING_WORKER_LABEL, &ours, &theirs, &their_proof)
        .map_err(|()| HandshakeError::BindingWorkerProofRejected)
}

async fn binding_worker_side<S>(
    stream: &mut S,
    secret: &PlatformSecret,
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let magic = read_magic(stream).await?;
    let mut rest = [0u8; HELLO_LEN - MAGIC.len()];
    stream.read_exact(&mut rest).await?;
    // Our hello goes out even to a runtime of another version, so that it learns ours.
    let ours = nonce()?;
    stream.write_all(&hello(&ours)).await?;
    stream.flush().await?;
    let theirs = check_hello(magic, &rest)?;
    let mut their_proof = [0u8; PROOF_LEN];
    stream.read_exact(&mut their_proof).await?;
    if secret
        .verify(RUNTIME_LABEL, &theirs, &ours, &their_proof)
        .is_err()
    {
        // Best effort: the runtime learns why instead of seeing a bare close.
        let _ = stream.write_all(&[REFUSED]).await;
        let _ = stream.flush().await;
        return Err(HandshakeError::RuntimeProofRejected);
    }
    let proof = secret.proof(BINDING_WORKER_LABEL, &theirs, &ours);
    let mut answer = [0u8; 1 + PROOF_LEN];
    answer[0] = ACCEPTED;
    answer[1..].copy_from_slice(proof.as_ref());
    stream.write_all(&answer).await?;
    stream.flush().await?;
    Ok(())
}

fn nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| HandshakeError::Io(io::Error::other("the system random source failed")))?;
    Ok(nonce)
}

fn hello(nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut hello = [0u8; HELLO_LEN];
    hello[..MAGIC.len()].copy_from_slice(&MAGIC);
    hello[MAGIC.len()] = VERSION;
    hello[MAGIC.len() + 1..].copy_from_slice(nonce);
    hello
}

async fn read_magic<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<[u8; MAGIC.len()], HandshakeError> {
    let mut magic = [0u8; MAGIC.len()];
    stream.read_exact(&mut magic).await?;
    if magic != MAGIC {
        return Err(HandshakeError::NotAPeer(describe_foreign(&magic)));
    }
    Ok(magic)
}

async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<[u8; NONCE_LEN], HandshakeError> {
    let magic = read_magic(stream).await?;
    let mut rest = [0u8; HELLO_LEN - MAGIC.len()];
    stream.read_exact(&mut rest).await?;
    check_hello(magic, &rest)
}

/// The peer's nonce from a hello whose magic was already checked.
fn check_hello(
    _magic: [u8; MAGIC.len()],
    rest: &[u8; HELLO_LEN - MAGIC.len()],
) -> Result<[u8; NONCE_LEN], HandshakeError> {
    if rest[0] != VERSION {
        return Err(HandshakeError::Version {
            theirs: rest[0],
            ours: VERSION,
        });
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&rest[1..]);
    Ok(nonce)
}

/// What the first bytes of a foreign peer look like, for the log line that refuses it.
fn describe_foreign(first: &[u8]) -> String {
    const HTTP: [&[u8]; 10] = [
        b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ", b"HTTP",
    ];
    let hex: Vec<String> = first.iter().map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(" ");
    if HTTP.iter().any(|prefix| first.starts_with(prefix)) {
        format!("HTTP ({hex}): an HTTP client or server, not a runtime or binding-worker")
    } else if first.starts_with(&[0, 0, 0, 0]) {
        format!(
            "a capnp message without the handshake ({hex}): give both sides the platform secret"
        )
    } else if first.starts_with(&[0x16, 0x03]) {
        format!("a TLS handshake ({hex})")
    } else {
        format!("unknown bytes {hex}")
    }
}

/// The secret that runtimes and binding-workers prove to each other that they hold: 32
/// random bytes, kept as 64 hex digits in `<state>/platform/secret` (mode 0600).
///
/// Processes sharing one state directory find it there; on several machines the operator
/// copies the file. `Debug` never shows it; [`PlatformSecret::fingerprint`] tells two copies
/// apart without revealing them.
#[derive(Clone)]
pub struct PlatformSecret {
    key: hmac::Key,
    fingerprint: String,
}

impl fmt::Debug for PlatformSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlatformSecret(fingerprint {})", self.fingerprint)
    }
}

impl PlatformSecret {
    /// The secret from these bytes.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        let tag = hmac::sign(&key, b"wvpc platform secret fingerprint");
        Self {
            fingerprint: hex::encode(&tag.as_ref()[..8]),
            key,
        }
    }

    /// A fresh random secret (for one process that starts both sides itself).
    pub fn generate() -> io::Result<Self> {
        let mut bytes = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| io::Error::other("the system random source failed"))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Where [`Self::load_or_create`] keeps the secret of `state_dir`.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join(SECRET_FILE)
    }

    /// The secret of `state_dir` (`<state>/platform/secret`), created if there is none yet.
    /// Creation is atomic and never replaces a file: processes that race here all end up with
    /// the one secret that landed first.
    pub fn load_or_create(state_dir: &Path) -> io::Result<Self> {
        let path = Self::path_in(state_dir);
        match Self::from_file(&path) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            found => return found,
        }
        let dir = path.parent().unwrap_or(state_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| annotate(e, format!("cannot create {}", dir.display())))?;
        let mut bytes = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| io::Error::other("the system random source failed"))?;
        // Written in full under a private name, then linked into place: a reader never sees a
        // partial file, and `link` fails instead of replacing a secret another process made.
        let temp = dir.join(format!(
            ".secret.{}.{}.tmp",
            std::process::id(),
            hex::encode(&bytes[..4])
        ));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            writeln!(file, "{}", hex::encode(bytes))?;
            file.sync_all()
        })();
        let linked = written.and_then(|()| std::fs::hard_link(&temp, &path));
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(annotate(
                    err,
                    format!("cannot create the platform secret {}", path.display()),
                ));
            }
        }
        // Whoever won the race, the file now holds the secret everybody uses.
        Self::from_file(&path)
    }

    /// The secret in `path`: 64 hex digits (surrounding whitespace ignored), or exactly 32
    /// raw bytes.
    pub fn from_file(path: &Path) -> io::Result<Self> {
        let content = std::fs::read(path).map_err(|e| {
            annotate(
                e,
                format!("cannot read the platform secret {}", path.display()),
            )
        })?;
        let text = String::from_utf8_lossy(&content);
        let mut bytes = [0u8; SECRET_LEN];
        if hex::decode_to_slice(text.trim(), &mut bytes).is_ok() {
            return Ok(Self::from_bytes(bytes));
        }
        if content.len() == SECRET_LEN {
            bytes.copy_from_slice(&content);
            return Ok(Self::from_bytes(bytes));
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: a platform secret is 64 hex digits (32 bytes), and these {} bytes are \
                 not; copy <state>/platform/secret of the platform's state directory over it",
                path.display(),
                content.len()
            ),
        ))
    }

    /// A bearer token for `purpose` derived from the secret (64 hex digits of an HMAC): the
    /// other services of the platform (a runtime's control listener) accept it without the
    /// secret itself ever being sent.
    pub fn derive_token(&self, purpose: &str) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(b"wvpc derived token\0");
        context.update(purpose.as_bytes());
        hex::encode(context.sign().as_ref())
    }

    /// A short public name of this secret (16 hex digits of an HMAC of a fixed text): equal
    /// fingerprints mean equal secrets, and it reveals nothing about the secret.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn proof(
        &self,
        label: &[u8],
        runtime_nonce: &[u8; NONCE_LEN],
        worker_nonce: &[u8; NONCE_LEN],
    ) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(label);
        context.update(runtime_nonce);
        context.update(worker_nonce);
        context.sign()
    }

    /// Checks `proof` in constant time.
    fn verify(
        &self,
        label: &[u8],
        runtime_nonce: &[u8; NONCE_LEN],
        worker_nonce: &[u8; NONCE_LEN],
        proof: &[u8; PROOF_LEN],
    ) -> Result<(), ()> {
        let mut message = Vec::with_capacity(label.len() + 2 * NONCE_LEN);
        message.extend_from_slice(label);
        message.extend_from_slice(runtime_nonce);
        message.extend_from_slice(worker_nonce);
        hmac::verify(&self.key, &message, proof).map_err(|_| ())
    }
}

fn annotate(err: io::Error, context: String) -> io::Error {
    io::Error::new(err.kind(), format!("{context}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn secret(byte: u8) -> PlatformSecret {
        PlatformSecret::from_bytes([byte; SECRET_LEN])
    }

    async fn run_both(
        runtime: PlatformSecret,
        worker: PlatformSecret,
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let (mut a, mut b) = duplex(1024);
        let runtime_side = async move {
            let result = handshake_as_runtime(&mut a, &runtime, HANDSHAKE_TIMEOUT).await;
            drop(a);
            result
        };
        let worker_side = async move {
            let result = handshake_as_binding_worker(&mut b, &worker, HANDSHAKE_TIMEOUT).await;
            drop(b);
            result
        };
        tokio::join!(runtime_side, worker_side)
    }

    #[tokio::test]
    async fn equal_secrets_pass_both_ways() {
        let (runtime, worker) = run_both(secret(7), secret(7)).await;
        runtime.unwrap();
        worker.unwrap();
    }

    #[tokio::test]
    async fn different_secrets_are_refused_and_both_sides_say_why() {
        let (runtime, worker) = run_both(secret(7), secret(8)).await;
        assert!(matches!(worker, Err(HandshakeError::RuntimeProofRejected)));
        let err = runtime.unwrap_err();
        assert!(
            matches!(err, HandshakeError::RefusedByBindingWorker),
            "{err}"
        );
        assert!(err.to_string().contains("different platform secrets"));
    }

    #[tokio::test]
    async fn a_rogue_binding_worker_that_accepts_anything_is_caught_by_the_runtime() {
        // It plays the protocol but cannot compute the proof of a secret it does not hold.
        let (mut runtime_end, mut rogue_end) = duplex(1024);
        let rogue = async move {
            let mut hello_in = [0u8; HELLO_LEN];
            rogue_end.read_exact(&mut hello_in).await.unwrap();
            rogue_end.write_all(&hello(&[9; NONCE_LEN])).await.unwrap();
            let mut proof = [0u8; PROOF_LEN];
            rogue_end.read_exact(&mut proof).await.unwrap();
            // Reflecting the runtime's own proof back does not work either.
            let mut answer = vec![ACCEPTED];
            answer.extend_from_slice(&proof);
            rogue_end.write_all(&answer).await.unwrap();
            rogue_end
        };
        let ours = secret(7);
        let runtime = handshake_as_runtime(&mut runtime_end, &ours, HANDSHAKE_TIMEOUT);
        let (result, _rogue_end) = tokio::join!(runtime, rogue);
        assert!(matches!(
            result,
            Err(HandshakeError::BindingWorkerProofRejected)
        ));
    }

    #[tokio::test]
    async fn foreign_bytes_are_described_not_trusted() {
        for (sent, expected) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], "HTTP"),
            (
                &[0u8, 0, 0, 0, 3, 0, 0, 0, 1, 2][..],
                "capnp message without",
            ),
            (&[0x16u8, 0x03, 0x01, 0x02, 0, 1, 2, 3, 4][..], "TLS"),
            (&[0xffu8; 12][..], "unknown bytes ff ff"),
        ] {
            let (mut worker_end, mut peer) = duplex(1024);
            peer.write_all(sent).await.unwrap();
            let err = handshake_as_binding_worker(&mut worker_end, &secret(1), HANDSHAKE_TIMEOUT)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, HandshakeError::NotAPeer(what) if what.contains(expected)),
                "{sent:?}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn another_version_is_refused_with_both_numbers() {
        let (mut worker_end, mut peer) = duplex(1024);
        let mut old = hello(&[3; NONCE_LEN]);
        old[MAGIC.len()] = 9;
        peer.write_all(&old).await.unwrap();
        let err = handshake_as_binding_worker(&mut worker_end, &secret(1), HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the peer speaks binding handshake version 9, this build speaks 1"
        );
    }

    #[tokio::test]
    async fn a_silent_or_closing_peer_ends_the_handshake() {
        let (mut worker_end, peer) = duplex(1024);
        let err =
            handshake_as_binding_worker(&mut worker_end, &secret(1), Duration::from_millis(50))
                .await
                .unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
        drop(peer);
        let err = handshake_as_runtime(&mut worker_end, &secret(1), HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Closed), "{err}");
    }

    #[test]
    fn the_secret_is_created_once_private_and_shared_by_racing_processes() {
        use std::os::unix::fs::PermissionsExt as _;
        let state = tempfile::tempdir().unwrap();
        let fingerprints: Vec<String> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        PlatformSecret::load_or_create(state.path())
                            .unwrap()
                            .fingerprint()
                            .to_owned()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let path = PlatformSecret::path_in(state.path());
        let on_disk = PlatformSecret::from_file(&path).unwrap();
        assert!(fingerprints.iter().all(|f| f == on_disk.fingerprint()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64, "{text:?}");
        // Nothing left behind but the secret.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        // A second start finds the same secret, and Debug shows only the fingerprint.
        let again = PlatformSecret::load_or_create(state.path()).unwrap();
        assert_eq!(again.fingerprint(), on_disk.fingerprint());
        assert!(!format!("{again:?}").contains(text.trim()));
    }

    #[test]
    fn a_secret_file_may_be_hex_or_raw_and_anything_else_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let hex_file = dir.path().join("hex");
        std::fs::write(&hex_file, format!("  {}\n", "ab".repeat(32))).unwrap();
        let raw_file = dir.path().join("raw");
        std::fs::write(&raw_file, [0xab; 32]).unwrap();
        assert_eq!(
            PlatformSecret::from_file(&hex_file).unwrap().fingerprint(),
            PlatformSecret::from_file(&raw_file).unwrap().fingerprint()
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a secret").unwrap();
        let err = PlatformSecret::from_file(&bad).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let missing = PlatformSecret::from_file(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}

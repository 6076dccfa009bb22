//! Stream preambles: the 6-byte signature that starts every stream the edge opens, and the
//! protocol version that follows it on data streams.
//!
//! The control stream (the first stream the connector opens) has no preamble: Cap'n Proto RPC
//! starts at its first byte.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::connect::StreamError;

/// Signature of a data stream (HTTP, WebSocket or TCP); followed by [`PROTOCOL_VERSION`].
pub const DATA_STREAM_SIGNATURE: [u8; 6] = [0x0A, 0x36, 0xCD, 0x12, 0xA1, 0x3E];

/// Signature of an RPC stream (Cap'n Proto RPC follows at once, no version).
pub const RPC_STREAM_SIGNATURE: [u8; 6] = [0x52, 0xBB, 0x82, 0x5C, 0xDB, 0x65];

/// Data-stream protocol version, ASCII. cloudflared never checks it; we write it and skip it.
pub const PROTOCOL_VERSION: [u8; 2] = *b"01";

/// The full data-stream preamble: signature then version.
pub const DATA_STREAM_PREAMBLE: [u8; 8] = {
    let mut out = [0u8; 8];
    let mut i = 0;
    while i < 6 {
        out[i] = DATA_STREAM_SIGNATURE[i];
        i += 1;
    }
    out[6] = PROTOCOL_VERSION[0];
    out[7] = PROTOCOL_VERSION[1];
    out
};

/// What a stream carries, as told by its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A proxied request: version, `ConnectRequest`, then raw bytes.
    Data,
    /// Cap'n Proto RPC toward the peer's bootstrap capability.
    Rpc,
}

impl StreamKind {
    /// The kind for a signature, if it is one of ours.
    pub fn from_signature(signature: [u8; 6]) -> Option<Self> {
        match signature {
            DATA_STREAM_SIGNATURE => Some(Self::Data),
            RPC_STREAM_SIGNATURE => Some(Self::Rpc),
            _ => None,
        }
    }

    /// The signature bytes of this kind.
    pub const fn signature(self) -> [u8; 6] {
        match self {
            Self::Data => DATA_STREAM_SIGNATURE,
            Self::Rpc => RPC_STREAM_SIGNATURE,
        }
    }
}

/// Reads the 6-byte signature at the start of a stream.
pub async fn read_signature<R: AsyncRead + Unpin>(r: &mut R) -> Result<StreamKind, StreamError> {
    let mut signature = [0u8; 6];
    read_exact_or(r, &mut signature, "stream signature").await?;
    StreamKind::from_signature(signature).ok_or(StreamError::UnknownSignature(signature))
}

/// Reads the 2-byte version that follows a data-stream signature (its value is not checked,
/// as in cloudflared).
pub async fn read_version<R: AsyncRead + Unpin>(r: &mut R) -> Result<[u8; 2], StreamError> {
    let mut version = [0u8; 2];
    read_exact_or(r, &mut version, "protocol version").await?;
    Ok(version)
}

/// `read_exact` that names what was cut short.
pub(crate) async fn read_exact_or<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), StreamError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(StreamError::Truncated(what))
        }
        Err(e) => Err(StreamError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signatures_are_recognised_and_strangers_refused() {
        let mut data = &DATA_STREAM_PREAMBLE[..];
        assert_eq!(read_signature(&mut data).await.unwrap(), StreamKind::Data);
        assert_eq!(read_version(&mut data).await.unwrap(), *b"01");

        let mut rpc = &RPC_STREAM_SIGNATURE[..];
        assert_eq!(read_signature(&mut rpc).await.unwrap(), StreamKind::Rpc);

        let mut http = &b"GET / HTTP/1.1\r\n"[..];
        assert!(matches!(
            read_signature(&mut http).await,
            Err(StreamError::UnknownSignature(sig)) if &sig == b"GET / "
        ));

        let mut short = &DATA_STREAM_SIGNATURE[..3];
        assert!(matches!(
            read_signature(&mut short).await,
            Err(StreamError::Truncated(_))
        ));
    }
}

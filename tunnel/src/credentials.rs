//! Tunnel credentials in cloudflared's formats: the credentials file JSON
//! (`{"AccountTag","TunnelSecret","TunnelID","Endpoint"}`) and the token
//! (`base64(JSON{"a","s","t","e"})`). Only account tag, secret and tunnel id go on the wire.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a connector needs to register a tunnel connection.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Account the tunnel belongs to.
    pub account_tag: String,
    /// Shared secret (32 random bytes when we mint it).
    pub tunnel_secret: Vec<u8>,
    /// The tunnel's UUID.
    pub tunnel_id: Uuid,
    /// cloudflared's endpoint hint; empty for us.
    pub endpoint: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Credentials")
            .field("account_tag", &self.account_tag)
            .field("tunnel_id", &self.tunnel_id)
            .finish_non_exhaustive()
    }
}

/// Why a token or credentials file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The token is not base64.
    #[error("tunnel token is not valid base64: {0}")]
    TokenBase64(String),
    /// The token's JSON is malformed or misses a field.
    #[error("tunnel token does not contain valid JSON {{\"a\",\"s\",\"t\"}}: {0}")]
    TokenJson(String),
    /// The credentials file JSON is malformed or misses a field.
    #[error(
        "credentials file is not valid JSON {{\"AccountTag\",\"TunnelSecret\",\"TunnelID\"}}: {0}"
    )]
    FileJson(String),
    /// The secret is not base64.
    #[error("tunnel secret is not valid base64: {0}")]
    SecretBase64(String),
    /// The tunnel id is not a UUID.
    #[error("tunnel id {0:?} is not a UUID")]
    TunnelId(String),
    /// A required field is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
}

#[derive(Serialize, Deserialize)]
struct TokenJson {
    a: String,
    s: String,
    t: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    e: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FileJson {
    account_tag: String,
    tunnel_secret: String,
    #[serde(rename = "TunnelID")]
    tunnel_id: String,
    #[serde(default)]
    endpoint: String,
}

impl Credentials {
    /// Mints fresh credentials for a tunnel: a random 32-byte secret.
    pub fn mint(account_tag: impl Into<String>, tunnel_id: Uuid) -> Self {
        let mut secret = vec![0u8; 32];
        rand::fill(&mut secret[..]);
        Self {
            account_tag: account_tag.into(),
            tunnel_secret: secret,
            tunnel_id,
            endpoint: String::new(),
        }
    }

    /// The cloudflared token for these credentials.
    pub fn to_token(&self) -> String {
        let json = TokenJson {
            a: self.account_tag.clone(),
            s: STANDARD.encode(&self.tunnel_secret),
            t: self.tunnel_id.to_string(),
            e: self.endpoint.clone(),
        };
        STANDARD.encode(serde_json::to_vec(&json).expect("token json serializes"))
    }

    /// Parses a cloudflared token.
    pub fn from_token(token: &str) -> Result<Self, CredentialsError> {
        let raw = STANDARD
            .decode(token.trim())
            .map_err(|e| CredentialsError::TokenBase64(e.to_string()))?;
        let json: TokenJson =
            serde_json::from_slice(&raw).map_err(|e| CredentialsError::TokenJson(e.to_string()))?;
        Self::from_parts(json.a, &json.s, &json.t, json.e)
    }

    /// The cloudflared credentials file content.
    pub fn to_file_json(&self) -> String {
        let json = FileJson {
            account_tag: self.account_tag.clone(),
            tunnel_secret: STANDARD.encode(&self.tunnel_secret),
            tunnel_id: self.tunnel_id.to_string(),
            endpoint: self.endpoint.clone(),
        };
        serde_json::to_string(&json).expect("credentials json serializes")
    }

    /// Parses a cloudflared credentials file.
    pub fn from_file_json(text: &str) -> Result<Self, CredentialsError> {
        let json: FileJson =
            serde_json::from_str(text).map_err(|e| CredentialsError::FileJson(e.to_string()))?;
        Self::from_parts(
            json.account_tag,
            &json.tunnel_secret,
            &json.tunnel_id,
            json.endpoint,
        )
    }

    fn from_parts(
        account_tag: String,
        secret: &str,
        tunnel_id: &str,
        endpoint: String,
    ) -> Result<Self, CredentialsError> {
        if account_tag.is_empty() {
            return Err(CredentialsError::Empty("account tag"));
        }
        let tunnel_secret = STANDARD
            .decode(secret)
            .map_err(|e| CredentialsError::SecretBase64(e.to_string()))?;
        if tunnel_secret.is_empty() {
            return Err(CredentialsError::Empty("tunnel secret"));
        }
        let tunnel_id = Uuid::parse_str(tunnel_id)
            .map_err(|_| CredentialsError::TunnelId(tunnel_id.to_owned()))?;
        Ok(Self {
            account_tag,
            tunnel_secret,
            tunnel_id,
            endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_file_round_trip() {
        let c = Credentials::mint("acct", Uuid::new_v4());
        assert_eq!(c.tunnel_secret.len(), 32);
        assert_eq!(Credentials::from_token(&c.to_token()).unwrap(), c);
        assert_eq!(Credentials::from_file_json(&c.to_file_json()).unwrap(), c);
        assert!(c.to_file_json().contains("\"TunnelID\""));
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        assert!(matches!(
            Credentials::from_token("%%%"),
            Err(CredentialsError::TokenBase64(_))
        ));
        let not_json = STANDARD.encode("hello");
        assert!(matches!(
            Credentials::from_token(&not_json),
            Err(CredentialsError::TokenJson(_))
        ));
        let bad_id = STANDARD.encode(r#"{"a":"x","s":"c2VjcmV0","t":"nope"}"#);
        assert_eq!(
            Credentials::from_token(&bad_id),
            Err(CredentialsError::TunnelId("nope".into()))
        );
        let no_secret =
            STANDARD.encode(r#"{"a":"x","s":"","t":"00000000-0000-0000-0000-000000000000"}"#);
        assert_eq!(
            Credentials::from_token(&no_secret),
            Err(CredentialsError::Empty("tunnel secret"))
        );
    }
}

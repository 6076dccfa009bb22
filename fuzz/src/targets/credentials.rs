//! Tunnel tokens and credentials files (`wvpc_tunnel::Credentials`), as `wvpc tunnel run` and
//! cloudflared-compatible tools read them.

use arbitrary::Unstructured;
use wvpc_tunnel::Credentials;

fn assert_round_trips(credentials: &Credentials) {
    assert!(!credentials.account_tag.is_empty());
    assert!(!credentials.tunnel_secret.is_empty());
    assert_eq!(
        Credentials::from_token(&credentials.to_token()).as_ref(),
        Ok(credentials)
    );
    assert_eq!(
        Credentials::from_file_json(&credentials.to_file_json()).as_ref(),
        Ok(credentials)
    );
}

/// Whatever reads as credentials (as a token or as a file) has an account and a secret and
/// writes back, in both forms, to the same credentials; so do credentials built from parts.
pub fn credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for read in [
        Credentials::from_token(&text),
        Credentials::from_file_json(&text),
    ] {
        match read {
            Ok(credentials) => assert_round_trips(&credentials),
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }
    let mut u = Unstructured::new(data);
    let built = (|| -> arbitrary::Result<Credentials> {
        let mut account_tag: String = u.arbitrary()?;
        if account_tag.is_empty() {
            account_tag.push('a');
        }
        let mut tunnel_secret: Vec<u8> = u.arbitrary()?;
        if tunnel_secret.is_empty() {
            tunnel_secret.push(0);
        }
        Ok(Credentials {
            account_tag,
            tunnel_secret,
            tunnel_id: uuid::Uuid::from_bytes(u.arbitrary()?),
            endpoint: u.arbitrary()?,
        })
    })();
    if let Ok(credentials) = built {
        assert_round_trips(&credentials);
    }
}

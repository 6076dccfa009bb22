//! RFC 9209 `Proxy-Status` values (`wvpc_errors`), which the binding-worker reads from iris's
//! CONNECT answers.

use arbitrary::Unstructured;
use wvpc_errors::{ErrorCode, ProxyError};

/// What a rendered error keeps: sf-strings carry printable ASCII only.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

fn sanitized(err: &ProxyError) -> ProxyError {
    ProxyError {
        code: err.code,
        rcode: err.rcode.as_deref().map(printable),
        details: err.details.as_deref().map(printable),
    }
}

/// Any value parses without panicking; an error read from a value renders to a value that
/// reads back the same (up to the characters an sf-string cannot carry), and so does any
/// error we render.
pub fn proxy_status(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(err) = ProxyError::from_proxy_status(&text) {
        assert_renders_back(&err);
    }
    let mut u = Unstructured::new(data);
    let built = (|| -> arbitrary::Result<ProxyError> {
        Ok(ProxyError {
            code: *u.choose(&ErrorCode::ALL)?,
            rcode: u.arbitrary()?,
            details: u.arbitrary()?,
        })
    })();
    if let Ok(err) = built {
        assert_renders_back(&err);
    }
}

fn assert_renders_back(err: &ProxyError) {
    let rendered = err.to_proxy_status("iris");
    let read = ProxyError::from_proxy_status(&rendered)
        .unwrap_or_else(|| panic!("{rendered:?} does not read back"));
    assert_eq!(read, sanitized(err), "{rendered:?}");
    // Behind another proxy's member, the first error is still ours.
    let chained = format!("cache; hit, {rendered}");
    assert_eq!(ProxyError::from_proxy_status(&chained), Some(read));
}

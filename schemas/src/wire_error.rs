//! Conversion between [`wvpc_errors::ProxyError`] and the capnp `WireError`.

use wvpc_errors::{ErrorCode, ProxyError};

use crate::binding_capnp::{ErrorCode as CapnpErrorCode, wire_error};

/// Fills a capnp `WireError` from a [`ProxyError`].
pub fn write_wire_error(mut w: wire_error::Builder<'_>, err: &ProxyError) {
    // Both enums share ordinals (checked by a test below).
    let code =
        CapnpErrorCode::try_from(err.code.ordinal()).unwrap_or(CapnpErrorCode::ProxyInternalError);
    w.set_code(code);
    w.set_rcode(err.rcode.as_deref().unwrap_or(""));
    w.set_details(err.details.as_deref().unwrap_or(""));
}

/// Reads a capnp `WireError`. A code this build does not know becomes `proxy_internal_error`
/// with the unknown ordinal in the details.
pub fn read_wire_error(r: wire_error::Reader<'_>) -> ProxyError {
    let code = match r.get_code() {
        Ok(c) => ErrorCode::from_ordinal(c as u16),
        Err(capnp::NotInSchema(n)) => {
            return ProxyError::new(ErrorCode::ProxyInternalError)
                .with_details(format!("peer sent unknown error code ordinal {n}"));
        }
    }
    .unwrap_or(ErrorCode::ProxyInternalError);
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| {
        t.ok()
            .and_then(|t| t.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    ProxyError {
        code,
        rcode: text(r.get_rcode()),
        details: text(r.get_details()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_the_capnp_enum() {
        for code in ErrorCode::ALL {
            let mut msg = capnp::message::Builder::new_default();
            let err = ProxyError::dns("SERVFAIL").with_details("d");
            let err = ProxyError { code, ..err };
            write_wire_error(msg.init_root::<wire_error::Builder<'_>>(), &err);
            let back = read_wire_error(msg.get_root_as_reader().unwrap());
            assert_eq!(back, err, "{code}");
        }
    }

    #[test]
    fn capnp_enum_names_match_wire_names() {
        // The capnp enum is camelCase of the snake_case wire name, in the same order.
        for code in ErrorCode::ALL {
            let capnp_code = CapnpErrorCode::try_from(code.ordinal()).unwrap();
            let camel: String = code
                .wire_name()
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap()
                })
                .collect();
            assert_eq!(format!("{capnp_code:?}"), camel);
        }
    }
}

//! [`Headers`]: an ordered multimap of HTTP fields, names compared case-insensitively.

/// HTTP header fields. Values are bytes (not necessarily UTF-8); names keep their spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, Vec<u8>)>,
}

impl Headers {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Adds a value, keeping existing ones.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.fields.push((name.into(), value.into()));
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        let name = name.into();
        self.remove(&name);
        self.fields.push((name, value.into()));
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// All fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Copies wasi fields.
    pub(crate) fn from_wasi(fields: &wasip2::http::types::Fields) -> Self {
        Self {
            fields: fields.entries(),
        }
    }

    /// wasi fields for an outgoing message. Fields wasi:http manages itself and refuses
    /// (`Host`, which comes from the URL; `Connection`, `Transfer-Encoding` and other
    /// hop-by-hop fields) are left out; a syntactically invalid field is an error.
    pub(crate) fn to_wasi(&self) -> Result<wasip2::http::types::Fields, InvalidHeader> {
        use wasip2::http::types::{Fields, HeaderError};
        let fields = Fields::new();
        for (name, value) in &self.fields {
            match fields.append(name, value) {
                Ok(()) | Err(HeaderError::Forbidden) => {}
                Err(HeaderError::InvalidSyntax | HeaderError::Immutable) => {
                    return Err(InvalidHeader(name.clone()));
                }
            }
        }
        Ok(fields)
    }
}

/// The name of a header field that wasi:http rejects as malformed.
#[derive(Debug)]
pub(crate) struct InvalidHeader(pub String);

impl<N: Into<String>, V: Into<Vec<u8>>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self {
            fields: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}

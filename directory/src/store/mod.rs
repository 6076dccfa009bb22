//! The storage boundary: the directory's logic runs its SQL through [`Tx`], a small
//! transactional interface with one implementation per backend (SQLite, PostgreSQL).
//!
//! Queries are written once, in the SQL both databases understand, with SQLite's numbered
//! placeholders (`?1`); the PostgreSQL backend rewrites them to `$1`. Values cross the
//! boundary as [`Value`] (null, integer, text, bytes) and rows come back as [`Row`]s of them,
//! so the row mapping of every table is shared. What differs per backend (how a transaction
//! starts, how the revision is bumped and announced, the schema's types) lives in
//! [`sqlite`] and [`postgres`].

pub(crate) mod changes;
pub mod location;
pub(crate) mod postgres;
pub(crate) mod sqlite;

pub use changes::Changes;

use crate::error::DirectoryError;

/// One SQL value, as both backends store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A Rust value that can be a query parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

/// A Rust value a column can be read as.
pub(crate) trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Bytes(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Bytes(self.clone())
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> Value {
        Value::Bytes(self.to_vec())
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::from(*self))
            }
        }
        impl FromValue for $t {
            fn from_value(value: &Value) -> Option<Self> {
                match value {
                    Value::Int(v) => <$t>::try_from(*v).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_values!(i64, i32, u32, u16, u8);

impl ToValue for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl ToValue for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Bytes(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => Some(*v != 0),
            _ => None,
        }
    }
}

impl FromValue for usize {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => usize::try_from(*v).ok(),
            _ => None,
        }
    }
}

impl FromValue for u64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug)]
pub(crate) struct Row {
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(values: Vec<Value>) -> Self {
        Self { values }
    }

    /// Column `index` as `T`; a missing column or another type is a corrupt row.
    pub(crate) fn get<T: FromValue>(&self, index: usize) -> Result<T, DirectoryError> {
        let value = self.values.get(index).unwrap_or(&Value::Null);
        T::from_value(value).ok_or_else(|| DirectoryError::Corrupt {
            what: format!("column {index}"),
            detail: format!("unexpected value {}", describe(value)),
        })
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Int(v) => format!("integer {v}"),
        Value::Text(v) => format!("text {v:?}"),
        Value::Bytes(v) => format!("{} bytes", v.len()),
    }
}

/// Query parameters: `params![a, b]`.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::ToValue] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::ToValue),+] as &[&dyn $crate::store::ToValue] };
}
pub(crate) use params;

/// Query parameters: `params![a, b]`, or an array of one type.
pub(crate) trait Params {
    fn values(&self) -> Vec<Value>;
}

impl Params for &[&dyn ToValue] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(|p| p.to_value()).collect()
    }
}

impl<T: ToValue, const N: usize> Params for [T; N] {
    fn values(&self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}

/// Which SQL dialect a transaction speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// One open transaction (or, for plain reads, one connection) of either backend.
pub(crate) enum Tx<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(postgres::PgTx<'a>),
}

impl Tx<'_> {
    /// The dialect of the backend.
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Every row of `sql`, mapped by `f`.
    pub(crate) fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut f: impl FnMut(&Row) -> Result<T, DirectoryError>,
    ) -> Result<Vec<T>, DirectoryError> {
        let rows = match self {
            Tx::Sqlite(conn) => sqlite::query(conn, sql, &params.values())?,
            Tx::Postgres(tx) => tx.query(sql, &params.values())?,
        };
        rows.iter().map(&mut f).collect()
    }

    /// The first row of `sql`, mapped by `f`; `None` when there is none.
    pub(crate) fn query_opt<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T, DirectoryError>,
    ) -> Result<Option<T>, DirectoryError> {
        let rows = match self {
            Tx::Sqlite(conn) => sqlite::query(conn, sql, &params.values())?,
            Tx::Postgres(tx) => tx.query(sql, &params.values())?,
        };
        rows.first().map(f).transpose()
    }

    /// The one row of `sql` (an aggregate, a row known to exist), mapped by `f`.
    pub(crate) fn query_one<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| DirectoryError::Corrupt {
                what: "query result".into(),
                detail: format!(
                    "no row for {}",
                    sql.split_whitespace().collect::<Vec<_>>().join(" ")
                ),
            })
    }

    /// Runs a statement; the number of rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: impl Params) -> Result<usize, DirectoryError> {
        match self {
            Tx::Sqlite(conn) => sqlite::execute(conn, sql, &params.values()),
            Tx::Postgres(tx) => tx.execute(sql, &params.values()),
        }
    }

    /// Runs several statements without parameters (schema migrations).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), DirectoryError> {
        match self {
            Tx::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Tx::Postgres(tx) => tx.batch(sql),
        }
    }
}

//! Live runtime processes, as they announce themselves: each `wvpc runtime` records the
//! address of its control listener (where `wvpc tail` follows script output) and refreshes
//! the row while it runs. A row not refreshed within [`RUNTIME_TTL`] belongs to a runtime
//! that died without withdrawing and is ignored.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::database::{Directory, now_rfc3339};
use crate::error::DirectoryError;
use crate::store::params;

/// How long a runtime's announcement counts without a refresh.
pub const RUNTIME_TTL: Duration = Duration::from_secs(15);

/// One live runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeNode {
    /// The runtime's id (new at every start).
    pub node_id: Uuid,
    /// Its control listener.
    pub control_addr: SocketAddr,
    /// When it started, RFC 3339 UTC.
    pub started_at: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Directory {
    /// Records (or refreshes) a live runtime; call again within [`RUNTIME_TTL`].
    pub fn announce_runtime(
        &self,
        node_id: Uuid,
        control_addr: SocketAddr,
    ) -> Result<(), DirectoryError> {
        self.write_live(|tx| {
            tx.execute(
                "INSERT INTO runtime_nodes (node_id, control_addr, started_at, seen_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node_id) DO UPDATE SET control_addr = ?2, seen_at_ms = ?4",
                params![
                    node_id.to_string(),
                    control_addr.to_string(),
                    now_rfc3339(),
                    now_ms()
                ],
            )?;
            // Runtimes that died without withdrawing.
            let expired = now_ms() - 4 * i64::try_from(RUNTIME_TTL.as_millis()).unwrap_or(0);
            tx.execute("DELETE FROM runtime_nodes WHERE seen_at_ms < ?1", [expired])?;
            Ok(())
        })
    }

    /// Removes a runtime that stops.
    pub fn withdraw_runtime(&self, node_id: Uuid) -> Result<(), DirectoryError> {
        self.write_live(|tx| {
            tx.execute(
                "DELETE FROM runtime_nodes WHERE node_id = ?1",
                [node_id.to_string()],
            )?;
            Ok(())
        })
    }

    /// Runtimes that announced themselves within [`RUNTIME_TTL`].
    pub fn live_runtimes(&self) -> Result<Vec<RuntimeNode>, DirectoryError> {
        let since = now_ms() - i64::try_from(RUNTIME_TTL.as_millis()).unwrap_or(0);
        self.read(|conn| {
            let rows = conn.query_map(
                "SELECT node_id, control_addr, started_at FROM runtime_nodes
                 WHERE seen_at_ms >= ?1 ORDER BY started_at, node_id",
                [since],
                |row| {
                    Ok((
                        row.get::<String>(0)?,
                        row.get::<String>(1)?,
                        row.get::<String>(2)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|row| {
                    let (id, addr, started_at) = row;
                    Ok(RuntimeNode {
                        node_id: crate::tunnel::parse_uuid("runtime id", &id)?,
                        control_addr: addr.parse().map_err(|_| DirectoryError::Corrupt {
                            what: format!("control address of runtime {id}"),
                            detail: format!("{addr:?} is not an IP:PORT"),
                        })?,
                        started_at,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {

    both_backends! {
    #[test]
    fn runtimes_are_listed_until_they_withdraw(state) {
        let dir = state.open();
        let a = uuid::Uuid::new_v4();
        let b = uuid::Uuid::new_v4();
        dir.announce_runtime(a, "127.0.0.1:4000".parse().unwrap())
            .unwrap();
        dir.announce_runtime(b, "127.0.0.1:4001".parse().unwrap())
            .unwrap();
        // A refresh keeps one row per runtime and takes the new address.
        dir.announce_runtime(a, "127.0.0.1:4002".parse().unwrap())
            .unwrap();
        let mut live = dir.live_runtimes().unwrap();
        live.sort_by_key(|n| n.control_addr);
        let addrs: Vec<String> = live.iter().map(|n| n.control_addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:4001", "127.0.0.1:4002"]);
        dir.withdraw_runtime(a).unwrap();
        let live = dir.live_runtimes().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].node_id, b);
    }
    }
}

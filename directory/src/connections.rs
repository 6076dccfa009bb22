//! Live tunnel connections, as the iris nodes holding them record them: a row per registered
//! connection, removed when it closes, and every row of a node cleared when that node starts
//! (its connections died with its previous run). `wvpc tunnel info` reads them, so any
//! process sharing the state directory sees which connectors serve a tunnel.

use std::time::SystemTime;

use crate::store::{Row, Tx, params};
use serde::Serialize;
use uuid::Uuid;

use crate::database::{Directory, rfc3339};
use crate::error::DirectoryError;

/// One live connection of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveConnection {
    /// Connection id the edge assigned.
    pub connection_id: Uuid,
    /// The tunnel.
    pub tunnel_id: Uuid,
    /// The connector process (random per run).
    pub client_id: Uuid,
    /// Connector version string.
    pub version: String,
    /// Connector platform, e.g. `linux_amd64`.
    pub arch: String,
    /// HA connection index.
    pub conn_index: u8,
    /// The iris node holding the connection.
    pub edge_node: String,
    /// The connector's address as seen by the edge.
    pub remote_addr: String,
    /// When it registered, RFC 3339 UTC.
    pub since: String,
}

impl LiveConnection {
    /// `since` from a clock reading.
    pub fn since_time(t: SystemTime) -> String {
        rfc3339(time::OffsetDateTime::from(t))
    }

    fn from_row(row: &Row) -> Result<(Self, [String; 3]), DirectoryError> {
        let ids: [String; 3] = [row.get(0)?, row.get(1)?, row.get(2)?];
        let index: i64 = row.get(5)?;
        Ok((
            Self {
                connection_id: Uuid::nil(),
                tunnel_id: Uuid::nil(),
                client_id: Uuid::nil(),
                version: row.get(3)?,
                arch: row.get(4)?,
                conn_index: u8::try_from(index).unwrap_or(u8::MAX),
                edge_node: row.get(6)?,
                remote_addr: row.get(7)?,
                since: row.get(8)?,
            },
            ids,
        ))
    }
}

const INSERT_CONNECTION: &str = "INSERT INTO tunnel_connections
     (connection_id, tunnel_id, client_id, version, arch, conn_index, edge_node, remote_addr,
      since)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
     ON CONFLICT (connection_id) DO UPDATE SET tunnel_id = excluded.tunnel_id,
       client_id = excluded.client_id, version = excluded.version, arch = excluded.arch,
       conn_index = excluded.conn_index, edge_node = excluded.edge_node,
       remote_addr = excluded.remote_addr, since = excluded.since";

fn insert(tx: &Tx<'_>, c: &LiveConnection) -> Result<usize, DirectoryError> {
    tx.execute(
        INSERT_CONNECTION,
        params![
            c.connection_id.to_string(),
            c.tunnel_id.to_string(),
            c.client_id.to_string(),
            c.version,
            c.arch,
            c.conn_index,
            c.edge_node,
            c.remote_addr,
            c.since
        ],
    )
}

impl Directory {
    /// Records a live connection (replacing a row with the same connection id).
    pub fn record_tunnel_connection(&self, c: &LiveConnection) -> Result<(), DirectoryError> {
        self.write_live(|tx| {
            insert(tx, c)?;
            Ok(())
        })
    }

    /// Removes a connection that closed; `false` if it was not recorded.
    pub fn remove_tunnel_connection(&self, connection_id: Uuid) -> Result<bool, DirectoryError> {
        self.write_live(|tx| {
            Ok(tx.execute(
                "DELETE FROM tunnel_connections WHERE connection_id = ?1",
                [connection_id.to_string()],
            )? > 0)
        })
    }

    /// Makes `live` the whole set of connections recorded for `edge_node`, in one
    /// transaction: rows of the node not in `live` are removed (they closed while their
    /// records could not be written, or the node restarted). Returns how many were removed.
    pub fn replace_tunnel_connections(
        &self,
        edge_node: &str,
        live: &[LiveConnection],
    ) -> Result<usize, DirectoryError> {
        let kept: std::collections::HashSet<String> =
            live.iter().map(|c| c.connection_id.to_string()).collect();
        self.write_live(|tx| {
            let recorded: Vec<String> = tx.query_map(
                "SELECT connection_id FROM tunnel_connections WHERE edge_node = ?1",
                [edge_node],
                |row| row.get(0),
            )?;
            tx.execute(
                "DELETE FROM tunnel_connections WHERE edge_node = ?1",
                [edge_node],
            )?;
            for c in live {
                insert(tx, c)?;
            }
            Ok(recorded.iter().filter(|id| !kept.contains(*id)).count())
        })
    }

    /// Removes every connection recorded by `edge_node` (at its start); returns how many.
    pub fn clear_tunnel_connections(&self, edge_node: &str) -> Result<usize, DirectoryError> {
        self.write_live(|tx| {
            tx.execute(
                "DELETE FROM tunnel_connections WHERE edge_node = ?1",
                [edge_node],
            )
        })
    }

    /// The live connections of a tunnel, oldest first.
    pub fn tunnel_connections(
        &self,
        tunnel_id: Uuid,
    ) -> Result<Vec<LiveConnection>, DirectoryError> {
        self.read(|conn| {
            let rows = conn.query_map(
                "SELECT connection_id, tunnel_id, client_id, version, arch, conn_index,
                        edge_node, remote_addr, since
                 FROM tunnel_connections WHERE tunnel_id = ?1
                 ORDER BY since, conn_index",
                [tunnel_id.to_string()],
                LiveConnection::from_row,
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (mut c, [connection, tunnel, client]) = row;
                let parse = |column: &str, text: &str| {
                    Uuid::parse_str(text).map_err(|_| DirectoryError::Corrupt {
                        what: column.to_owned(),
                        detail: format!("{text:?} is not a UUID"),
                    })
                };
                c.connection_id = parse("tunnel_connections.connection_id", &connection)?;
                c.tunnel_id = parse("tunnel_connections.tunnel_id", &tunnel)?;
                c.client_id = parse("tunnel_connections.client_id", &client)?;
                out.push(c);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(tunnel: Uuid, node: &str, index: u8) -> LiveConnection {
        LiveConnection {
            connection_id: Uuid::new_v4(),
            tunnel_id: tunnel,
            client_id: Uuid::new_v4(),
            version: "wvpc-connector/0.1.0".into(),
            arch: "linux_amd64".into(),
            conn_index: index,
            edge_node: node.into(),
            remote_addr: "127.0.0.1:40000".into(),
            since: LiveConnection::since_time(SystemTime::now()),
        }
    }

    both_backends! {
    #[test]
    fn connections_are_recorded_removed_and_cleared_per_node(state) {
        let dir = state.open();
        let revision = dir.revision().unwrap();
        let tunnel = Uuid::new_v4();
        let a = live(tunnel, "iris-a", 0);
        let b = live(tunnel, "iris-b", 1);
        dir.record_tunnel_connection(&a).unwrap();
        dir.record_tunnel_connection(&b).unwrap();
        dir.record_tunnel_connection(&live(Uuid::new_v4(), "iris-a", 0))
            .unwrap();
        assert_eq!(
            dir.tunnel_connections(tunnel).unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            dir.revision().unwrap(),
            revision,
            "live state does not bump the revision"
        );

        assert!(dir.remove_tunnel_connection(b.connection_id).unwrap());
        assert!(!dir.remove_tunnel_connection(b.connection_id).unwrap());
        assert_eq!(dir.tunnel_connections(tunnel).unwrap(), vec![a]);
        assert_eq!(dir.clear_tunnel_connections("iris-a").unwrap(), 2);
        assert!(dir.tunnel_connections(tunnel).unwrap().is_empty());
    }
    }

    both_backends! {
    #[test]
    fn a_node_can_replace_all_its_connections_at_once(state) {
        let dir = state.open();
        let tunnel = Uuid::new_v4();
        let (gone, kept, other_node) = (
            live(tunnel, "iris-a", 0),
            live(tunnel, "iris-a", 1),
            live(tunnel, "iris-b", 0),
        );
        for c in [&gone, &kept, &other_node] {
            dir.record_tunnel_connection(c).unwrap();
        }
        let new = live(tunnel, "iris-a", 2);
        let removed = dir
            .replace_tunnel_connections("iris-a", &[kept.clone(), new.clone()])
            .unwrap();
        assert_eq!(removed, 1);
        let mut ids: Vec<Uuid> = dir
            .tunnel_connections(tunnel)
            .unwrap()
            .into_iter()
            .map(|c| c.connection_id)
            .collect();
        ids.sort();
        let mut want = vec![
            kept.connection_id,
            new.connection_id,
            other_node.connection_id,
        ];
        want.sort();
        assert_eq!(ids, want, "the other node's rows are untouched");
    }
    }
}

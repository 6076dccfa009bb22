//! A consistent picture of every service, for routers that keep routes in memory.

use crate::database::Directory;
use crate::error::DirectoryError;
use crate::service::Service;
use crate::services::all_services;

/// Every service of every account as of one committed revision.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    /// The revision the services were read at ([`Directory::revision`]).
    pub revision: u64,
    /// Every service, oldest first.
    pub services: Vec<Service>,
}

impl Directory {
    /// Reads the revision and every service in one read transaction, so the snapshot never
    /// mixes two commits.
    pub fn route_snapshot(&self) -> Result<RouteSnapshot, DirectoryError> {
        self.read_consistent(|tx| {
            let revision = crate::database::read_revision(tx)?;
            let services = all_services(tx)?;
            Ok(RouteSnapshot { revision, services })
        })
    }
}

//! The mock tunnel of the harness: iris's [`MockTunnel`] answering DNS from a [`DnsTable`],
//! so tests count queries and flip DNS faults on the same table a real DNS server would use.

pub use wvpc_iris::mock::{MockFault, MockTunnel};

use crate::dns::DnsTable;

/// A mock tunnel whose UDP flows are answered by `dns`.
pub fn with_dns(dns: &DnsTable) -> MockTunnel {
    let dns = dns.clone();
    MockTunnel::new(std::sync::Arc::new(move |query: &[u8]| dns.answer(query)))
}

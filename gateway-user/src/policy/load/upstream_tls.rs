//! A target's `upstream_tls` (PostgreSQL and HTTP targets): verify-full unless written
//! otherwise, plaintext only for a hop that stays on the node.

use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::super::{doc::UpstreamTlsDoc, model::UpstreamTls};
use super::Merger;

impl Merger {
    /// A target's `upstream_tls` (verify-full unless written otherwise).
    pub(super) fn upstream_tls(
        &mut self,
        file: &Path,
        target: &str,
        addresses: &[IpNet],
        doc: Option<UpstreamTlsDoc>,
    ) -> UpstreamTls {
        match doc {
            None => UpstreamTls::VerifyFull {
                ca_file: None,
                server_name: None,
            },
            Some(UpstreamTlsDoc::VerifyFull {
                ca_file,
                server_name,
            }) => UpstreamTls::VerifyFull {
                ca_file: ca_file.map(PathBuf::from),
                server_name,
            },
            Some(UpstreamTlsDoc::Disable) => {
                // Plaintext would carry the brokered credential and everything the target
                // sends over a network; only a hop that stays on this node may go without TLS.
                if addresses.iter().any(|a| !a.addr().is_loopback()) {
                    self.problem(
                        file,
                        format!(
                            "target `{target}`: upstream_tls `disable` is only allowed for loopback addresses; use verify-full"
                        ),
                    );
                }
                UpstreamTls::Disable
            }
        }
    }
}

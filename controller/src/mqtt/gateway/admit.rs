//! Admission at CONNECT: what the database says about a certificate rustls already
//! verified against the CA and the CRL ([`review::decide`]).

use std::net::SocketAddr;

use pifleet_shared::DeviceId;

use super::{End, Gateway};
use crate::store::review::{self, Admission};

impl Gateway {
    /// Whether the database lets this verified certificate in: a revoked device, or a serial
    /// it knows as revoked or as another device's, is refused (a backstop to the CRL, which
    /// cannot name serials a restored database never recorded). A device it does not know
    /// (enrolled after the restored backup) is re-registered from its certificate and
    /// flagged for review; so is a known device's unknown certificate.
    pub(super) async fn admit(
        &self,
        id: &DeviceId,
        serial: &str,
        leaf: &[u8],
        peer: SocketAddr,
    ) -> Result<(), End> {
        let unavailable =
            |e: crate::store::StoreError| End::Refused("store_unavailable", e.to_string());
        let facts = self
            .store
            .admission_facts(id.as_str(), serial)
            .await
            .map_err(unavailable)?;
        match review::decide(id.as_str(), &facts) {
            Admission::Known => return Ok(()),
            Admission::Refused(r) => return Err(End::Refused(r, format!("{id} serial {serial}"))),
            Admission::Reregister | Admission::AddCertificate => {}
        }
        let presented = crate::pki::presented_certificate(leaf, serial)
            .map_err(|e| End::Refused("bad_identity", e.to_string()))?;
        match self
            .store
            .register_presented(id.as_str(), &presented, &peer.ip().to_string())
            .await
            .map_err(unavailable)?
        {
            Admission::Refused(r) => Err(End::Refused(r, format!("{id} serial {serial}"))),
            Admission::Known => Ok(()),
            a @ (Admission::Reregister | Admission::AddCertificate) => {
                self.metrics.devices_needing_review.inc();
                tracing::warn!(device = %id, serial, source = %peer.ip(), reregistered = matches!(a, Admission::Reregister), "device not in the database re-registered from its certificate; flagged for review");
                Ok(())
            }
        }
    }
}

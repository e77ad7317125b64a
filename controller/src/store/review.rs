//! SQL of device admission and review: whether a device certificate the gateway verified
//! (our CA, not on the CRL) may connect as far as the database knows, and the rows written
//! for a certificate it does not know — after a restore, a device enrolled after the backup
//! is re-registered from its certificate and flagged for an admin's review.

use super::{Store, StoreError, audit, now_ms};
use crate::audit::Event;

/// Why a device is flagged when it is re-registered from its certificate.
pub const REASON_REREGISTERED: &str = "re-registered after restore: not in the database";
/// Why a device is flagged when it presents a certificate the database does not know.
pub const REASON_UNKNOWN_CERT: &str =
    "connected with a certificate not in the database (issued after the restored backup?)";

/// What the database knows about a presented certificate's device and serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The device row: `None` if there is none, else its `revoked_at`.
    pub device: Option<Option<i64>>,
    /// The certificate row of the serial: its device and `revoked_at`.
    pub cert: Option<(String, Option<i64>)>,
}

/// What to do with a connecting device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Known device, known certificate: nothing to write.
    Known,
    /// No device row: create it and the certificate row, flagged for review.
    Reregister,
    /// A known, unrevoked device with a certificate the database lacks: record the
    /// certificate and flag the device.
    AddCertificate,
    /// Refused, with the reason (a metric label).
    Refused(&'static str),
}

/// The decision, from what the database knows (table-tested). A serial the database knows
/// as revoked or as another device's, and a revoked device, never get in.
pub fn decide(id: &str, k: &Known) -> Admission {
    match (&k.device, &k.cert) {
        (_, Some((_, Some(_)))) => Admission::Refused("revoked_serial"),
        (_, Some((owner, None))) if owner != id => Admission::Refused("serial_of_other_device"),
        (Some(Some(_)), _) => Admission::Refused("device_revoked"),
        (Some(None), Some(_)) => Admission::Known,
        (Some(None), None) => Admission::AddCertificate,
        (None, _) => Admission::Reregister,
    }
}

/// A certificate as presented, for the rows written from it.
#[derive(Debug, Clone)]
pub struct Presented {
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    pub public_key_alg: &'static str,
    pub public_key: Vec<u8>,
}

impl Store {
    /// What the database knows about device `id` and certificate `serial` (from a reader:
    /// one small lookup per connect).
    pub async fn admission_facts(&self, id: &str, serial: &str) -> Result<Known, StoreError> {
        let device: Option<Option<i64>> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT revoked_at FROM devices WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?;
        let cert: Option<(String, Option<i64>)> = reading!(self, |ex| sqlx::query_as(
            "SELECT device_id, revoked_at FROM certificates WHERE serial = $1"
        )
        .bind(serial)
        .fetch_optional(ex)
        .await)?;
        Ok(Known { device, cert })
    }

    /// Records a device (when `reregister`) and its presented certificate, flagged for
    /// review, with an audit entry, all in one write transaction that decides again on what
    /// it reads (two connections at once write once). Returns the decision taken.
    pub async fn register_presented(
        &self,
        id: &str,
        cert: &Presented,
        audit_source: &str,
    ) -> Result<Admission, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let device: Option<Option<i64>> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT revoked_at FROM devices WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?;
        let known: Option<(String, Option<i64>)> = in_tx!(tx, |ex| sqlx::query_as(
            "SELECT device_id, revoked_at FROM certificates WHERE serial = $1"
        )
        .bind(&cert.serial)
        .fetch_optional(ex)
        .await)?;
        let decision = decide(
            id,
            &Known {
                device,
                cert: known,
            },
        );
        let reason = match decision {
            Admission::Reregister => {
                in_tx!(tx, |ex| sqlx::query(
                    "INSERT INTO devices (id, labels, enrolled_at, needs_review, review_reason) \
                     VALUES ($1, '{}', $2, TRUE, $3)",
                )
                .bind(id)
                .bind(now)
                .bind(REASON_REREGISTERED)
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
                REASON_REREGISTERED
            }
            Admission::AddCertificate => {
                in_tx!(tx, |ex| sqlx::query(
                    "UPDATE devices SET needs_review = TRUE, review_reason = $1 WHERE id = $2"
                )
                .bind(REASON_UNKNOWN_CERT)
                .bind(id)
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
                REASON_UNKNOWN_CERT
            }
            Admission::Known | Admission::Refused(_) => return Ok(decision),
        };
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO certificates (serial, device_id, issued_at, not_after, public_key_alg, \
             public_key) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&cert.serial)
        .bind(id)
        .bind(now)
        .bind(cert.not_after.saturating_mul(1000))
        .bind(cert.public_key_alg)
        .bind(&cert.public_key)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        let ev = Event {
            actor: "controller".into(),
            source: audit_source.to_owned(),
            action: "device.reregister".into(),
            target: id.to_owned(),
            outcome: "needs_review".into(),
            detail: format!("{reason}; certificate serial {}", cert.serial),
        };
        audit::append(&mut tx, &ev).await?;
        tx.commit().await?;
        Ok(decision)
    }

    /// Clears a device's review flag. `None` for an unknown device, else the reason it had
    /// (`Some(None)`: it needed no review).
    pub async fn clear_review(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
        let mut tx = self.write_tx().await?;
        let before: Option<(bool, Option<String>)> = in_tx!(tx, |ex| sqlx::query_as(
            "SELECT needs_review, review_reason FROM devices WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?;
        let Some((flagged, reason)) = before else {
            return Ok(None);
        };
        if !flagged {
            return Ok(Some(None));
        }
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE devices SET needs_review = FALSE, review_reason = NULL WHERE id = $1"
        )
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(Some(Some(reason.unwrap_or_default())))
    }

    /// Records a device revoked after the backup that the restored database never knew
    /// (enrolled after the backup): a revoked row keeps its certificate out, though the
    /// CRL cannot name a serial nobody recorded. False if the device is known.
    pub async fn revoke_unknown_device(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let r = writing!(self, |ex| sqlx::query(
            "INSERT INTO devices (id, labels, enrolled_at, revoked_at, review_reason) \
             VALUES ($1, '{}', $2, $3, 'revoked after the restored backup was made') \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(at)
        .bind(at)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Unrevoked devices flagged for review.
    pub async fn devices_needing_review(&self) -> Result<i64, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE needs_review = TRUE AND revoked_at IS NULL",
        )
        .fetch_one(ex)
        .await)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::store;

    #[test]
    fn admission_table() {
        let k = |device, cert: Option<(&str, Option<i64>)>| Known {
            device,
            cert: cert.map(|(d, r)| (d.to_owned(), r)),
        };
        let cases = [
            // (device row, certificate row, decision)
            (k(Some(None), Some(("pi-a", None))), Admission::Known),
            (k(Some(None), None), Admission::AddCertificate),
            (k(None, None), Admission::Reregister),
            (
                k(Some(None), Some(("pi-a", Some(5)))),
                Admission::Refused("revoked_serial"),
            ),
            (
                k(None, Some(("pi-a", Some(5)))),
                Admission::Refused("revoked_serial"),
            ),
            (
                k(Some(Some(5)), Some(("pi-a", None))),
                Admission::Refused("device_revoked"),
            ),
            (k(Some(Some(5)), None), Admission::Refused("device_revoked")),
            (
                k(Some(None), Some(("pi-b", None))),
                Admission::Refused("serial_of_other_device"),
            ),
            (
                k(None, Some(("pi-b", None))),
                Admission::Refused("serial_of_other_device"),
            ),
        ];
        for (known, want) in cases {
            assert_eq!(decide("pi-a", &known), want, "{known:?}");
        }
    }

    fn presented(serial: &str) -> Presented {
        Presented {
            serial: serial.into(),
            not_after: 2_000_000_000,
            public_key_alg: "ed25519",
            public_key: vec![7; 32],
        }
    }

    #[tokio::test]
    async fn an_unknown_device_is_registered_once_flagged_and_cleared() {
        let (_dir, s) = store().await;
        let facts = s.admission_facts("pi-new", "0abc").await.unwrap();
        assert_eq!(decide("pi-new", &facts), Admission::Reregister);
        let first = s
            .register_presented("pi-new", &presented("0abc"), "10.0.0.9")
            .await
            .unwrap();
        assert_eq!(first, Admission::Reregister);
        // A second connection racing the first writes nothing more.
        let again = s
            .register_presented("pi-new", &presented("0abc"), "10.0.0.9")
            .await
            .unwrap();
        assert_eq!(again, Admission::Known);
        assert_eq!(s.devices_needing_review().await.unwrap(), 1);
        assert!(s.device_cert_valid("pi-new", "0abc").await.unwrap());
        let keys = s.device_keys("pi-new").await.unwrap();
        assert_eq!(
            keys.first()
                .map(|(alg, key, _)| (alg.as_str(), key.clone())),
            Some(("ed25519", vec![7; 32]))
        );
        let audit = s
            .audit_page(&crate::model::audit::AuditFilter {
                actor: None,
                action: Some("device.reregister".into()),
                since: None,
                until: None,
                before: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.action == "device.reregister" && e.target == "pi-new"),
            "{audit:?}"
        );
        assert_eq!(
            s.clear_review("pi-new").await.unwrap(),
            Some(Some(REASON_REREGISTERED.to_owned()))
        );
        assert_eq!(s.clear_review("pi-new").await.unwrap(), Some(None));
        assert_eq!(s.clear_review("pi-none").await.unwrap(), None);
        assert_eq!(s.devices_needing_review().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn revoked_devices_and_serials_stay_out() {
        let (_dir, s) = store().await;
        s.register_presented("pi-old", &presented("01"), "x")
            .await
            .unwrap();
        s.revoke_device("pi-old").await.unwrap();
        // Its revoked serial, presented under another name, is refused.
        assert_eq!(
            s.register_presented("pi-other", &presented("01"), "x")
                .await
                .unwrap(),
            Admission::Refused("revoked_serial")
        );
        // A new certificate for the revoked device is refused too.
        assert_eq!(
            s.register_presented("pi-old", &presented("02"), "x")
                .await
                .unwrap(),
            Admission::Refused("device_revoked")
        );
        // A device revoked after the backup but enrolled after it too is kept out.
        assert!(s.revoke_unknown_device("pi-late", 5).await.unwrap());
        assert!(!s.revoke_unknown_device("pi-late", 6).await.unwrap());
        let facts = s.admission_facts("pi-late", "03").await.unwrap();
        assert_eq!(
            decide("pi-late", &facts),
            Admission::Refused("device_revoked")
        );
        assert_eq!(s.devices_needing_review().await.unwrap(), 0);
    }
}

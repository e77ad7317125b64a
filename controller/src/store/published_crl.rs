//! SQL for the latest signed CRL (`published_crl`, one row): written by every publication
//! (`pki::crl::publish`), read by `broker-sync` on the broker's host, and the certificates'
//! owners it needs to end the sessions of the newly revoked.

use super::{Store, StoreError, sql_int};

/// The CRL the database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCrl {
    /// Its CRL number.
    pub number: u64,
    /// The signed CRLs, PEM (during a CA rotation, one per CA).
    pub pem: String,
    /// When it was stored (Unix ms).
    pub published_at: i64,
}

impl Store {
    /// Stores a signed CRL unless the database already holds one with the same or a higher
    /// number (publications of several controllers may finish out of order); one
    /// conditional upsert. Returns whether it was stored.
    pub async fn store_crl(&self, number: u64, pem: &str, at: i64) -> Result<bool, StoreError> {
        let stored = writing!(self, |ex| sqlx::query(concat!(
            "INSERT INTO published_crl (id, number, pem, published_at) VALUES (1, $1, $2, $3) ",
            "ON CONFLICT (id) DO UPDATE SET number = excluded.number, pem = excluded.pem, ",
            "published_at = excluded.published_at ",
            "WHERE excluded.number > published_crl.number"
        ))
        .bind(sql_int(number))
        .bind(pem)
        .bind(at)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(stored > 0)
    }

    /// The latest stored CRL, if any was.
    pub async fn latest_crl(&self) -> Result<Option<StoredCrl>, StoreError> {
        let row: Option<(i64, String, i64)> = reading!(self, |ex| sqlx::query_as(
            "SELECT number, pem, published_at FROM published_crl WHERE id = 1"
        )
        .fetch_optional(ex)
        .await)?;
        Ok(row.map(|(number, pem, published_at)| StoredCrl {
            number: u64::try_from(number).unwrap_or(0),
            pem,
            published_at,
        }))
    }

    /// The devices the certificates with these serials (normalized lowercase hex) were
    /// issued to, each once, sorted.
    pub async fn devices_of_serials(&self, serials: &[String]) -> Result<Vec<String>, StoreError> {
        if serials.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = Vec::new();
        // Bounded statements: PostgreSQL takes at most 65,535 parameters.
        for chunk in serials.chunks(1000) {
            let found: Vec<String> = reading!(self, |ex| {
                let mut q = sqlx::QueryBuilder::<DB>::new(
                    "SELECT DISTINCT device_id FROM certificates WHERE serial IN (",
                );
                let mut list = q.separated(", ");
                for s in chunk {
                    list.push_bind(s.as_str());
                }
                q.push(")");
                q.build_query_scalar().fetch_all(ex).await
            })?;
            ids.extend(found);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::{add_device, store};

    /// A lower or equal number never replaces a higher one; a higher one does; on both
    /// backends (`PIFLEET_TEST_STORE=postgres`).
    #[tokio::test]
    async fn the_stored_crl_only_moves_forward() {
        let (_g, s) = store().await;
        assert_eq!(s.latest_crl().await.unwrap(), None);
        assert!(s.store_crl(5, "five", 50).await.unwrap());
        assert!(!s.store_crl(4, "four", 60).await.unwrap());
        assert!(!s.store_crl(5, "five again", 70).await.unwrap());
        let got = s.latest_crl().await.unwrap().unwrap();
        assert_eq!(
            got,
            StoredCrl {
                number: 5,
                pem: "five".to_owned(),
                published_at: 50
            }
        );
        assert!(s.store_crl(7, "seven", 80).await.unwrap());
        assert!(!s.store_crl(6, "six", 90).await.unwrap());
        let got = s.latest_crl().await.unwrap().unwrap();
        assert_eq!(
            (got.number, got.pem.as_str(), got.published_at),
            (7, "seven", 80)
        );
        // Still one row.
        let rows: i64 = reading!(s, |ex| sqlx::query_scalar(
            "SELECT COUNT(*) FROM published_crl"
        )
        .fetch_one(ex)
        .await)
        .unwrap();
        assert_eq!(rows, 1);
    }

    /// Publications racing from several tasks leave the highest number stored.
    #[tokio::test]
    async fn racing_publications_leave_the_highest() {
        let (_g, s) = store().await;
        let tasks: Vec<_> = (1..=20u64)
            .map(|n| {
                let s = s.clone();
                tokio::spawn(async move { s.store_crl(n, &format!("crl {n}"), 1).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let got = s.latest_crl().await.unwrap().unwrap();
        assert_eq!((got.number, got.pem.as_str()), (20, "crl 20"));
    }

    /// Serials map to the devices their certificates were issued to, each device once;
    /// unknown serials to nothing.
    #[tokio::test]
    async fn serials_map_to_their_devices() {
        let (_g, s) = store().await;
        for id in ["pi-a", "pi-b"] {
            add_device(&s, id, "{}", None, false).await;
        }
        for (serial, device) in [("a1", "pi-a"), ("a2", "pi-a"), ("b1", "pi-b")] {
            writing!(s, |ex| sqlx::query(
                "INSERT INTO certificates (serial, device_id, issued_at, not_after) \
                 VALUES ($1, $2, 1, 2)"
            )
            .bind(serial)
            .bind(device)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        }
        let of = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(s.devices_of_serials(&[]).await.unwrap(), of(&[]));
        assert_eq!(
            s.devices_of_serials(&of(&["a2", "a1", "zz"]))
                .await
                .unwrap(),
            of(&["pi-a"])
        );
        assert_eq!(
            s.devices_of_serials(&of(&["b1", "a1"])).await.unwrap(),
            of(&["pi-a", "pi-b"])
        );
    }
}

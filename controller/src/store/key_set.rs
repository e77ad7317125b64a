//! SQL for the record of the key files every controller sharing the database must hold
//! alike (`rotation::keyset`): one row of `meta`, a JSON object of file name → digest.

use super::{Store, StoreError};

impl Store {
    /// The recorded key set, if any controller recorded one.
    pub async fn key_set(&self) -> Result<Option<String>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = 'key_set'"
        )
        .fetch_optional(ex)
        .await)?)
    }

    /// Records `json` as the key set, replacing what was recorded, and announces it to the
    /// other controllers.
    pub async fn set_key_set(&self, json: &str) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('key_set', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(json)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        self.announce(super::changes::Change::Keys).await
    }

    /// Records `json` as the key set unless one is recorded; whether it was.
    pub async fn set_key_set_if_absent(&self, json: &str) -> Result<bool, StoreError> {
        let n = writing!(self, |ex| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('key_set', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(json)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testkit::store;

    #[tokio::test]
    async fn the_first_record_stays_until_replaced() {
        let (_d, s) = store().await;
        assert_eq!(s.key_set().await.unwrap(), None);
        assert!(s.set_key_set_if_absent("{\"a\":\"1\"}").await.unwrap());
        assert!(!s.set_key_set_if_absent("{\"a\":\"2\"}").await.unwrap());
        assert_eq!(s.key_set().await.unwrap().as_deref(), Some("{\"a\":\"1\"}"));
        s.set_key_set("{\"a\":\"3\"}").await.unwrap();
        assert_eq!(s.key_set().await.unwrap().as_deref(), Some("{\"a\":\"3\"}"));
    }

    /// A new record is announced to the other controllers (PostgreSQL).
    #[tokio::test]
    async fn a_new_record_is_announced() {
        let (_d, s) = store().await;
        let Some(mut changes) = s.changes().await.unwrap() else {
            return;
        };
        s.set_key_set("{}").await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
            .await
            .expect("no announcement within 5 s")
            .unwrap();
        assert_eq!(got, crate::store::changes::Change::Keys);
    }
}

//! SQL for `release_key_acks`: which release keys each device confirmed it trusts, and
//! which devices still need to be told.

use sqlx::QueryBuilder;

use super::{Store, StoreError, now_ms};

impl Store {
    /// Enrolled, unrevoked devices that have not confirmed every key of `key_ids` and have
    /// no announcement on its way (queued, sent, accepted or running).
    pub async fn devices_to_announce(&self, key_ids: &[String]) -> Result<Vec<String>, StoreError> {
        if key_ids.is_empty() {
            return Ok(Vec::new());
        }
        reading!(self, |ex| {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(
                "SELECT d.id FROM devices d WHERE d.revoked_at IS NULL \
             AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.device_id = d.id \
             AND c.action_kind = 'trust_release_keys' \
             AND c.status IN ('queued', 'sent', 'accepted', 'running')) \
             AND (SELECT COUNT(*) FROM release_key_acks a WHERE a.device_id = d.id \
             AND a.key_id IN (",
            );
            let mut ids = qb.separated(", ");
            for k in key_ids {
                ids.push_bind(k.clone());
            }
            qb.push(")) < ")
                .push_bind(i64::try_from(key_ids.len()).unwrap_or(i64::MAX))
                .push(" ORDER BY d.id");
            Ok(qb.build_query_scalar().fetch_all(ex).await?)
        })
    }

    /// Records that `device` confirmed it trusts `key_ids`, by the announcement `command`.
    pub async fn ack_release_keys(
        &self,
        device: &str,
        key_ids: &[String],
        command: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        for k in key_ids {
            in_tx!(tx, |ex| sqlx::query(
                "INSERT INTO release_key_acks (device_id, key_id, command_id, acked_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (device_id, key_id) DO UPDATE SET \
                 command_id = excluded.command_id, acked_at = excluded.acked_at",
            )
            .bind(device)
            .bind(k)
            .bind(command)
            .bind(now)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets every confirmation, so every device is told the current set again (after a
    /// rotation finished: devices then drop the keys no longer in it). Returns how many.
    pub async fn forget_release_key_acks(&self) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let n = in_tx!(tx, |ex| sqlx::query("DELETE FROM release_key_acks")
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(n)
    }

    /// The release key ids `device` confirmed, sorted.
    pub async fn acked_release_keys(&self, device: &str) -> Result<Vec<String>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT key_id FROM release_key_acks WHERE device_id = $1 ORDER BY key_id",
        )
        .bind(device)
        .fetch_all(ex)
        .await)?)
    }
}

#[cfg(test)]
mod tests {
    use pifleet_shared::command::{Action, CommandId};

    use super::super::NewCommand;
    use super::super::testkit::{add_device, store};

    #[tokio::test]
    async fn devices_are_announced_to_until_they_confirm_every_key() {
        let (_dir, s) = store().await;
        for id in ["pi-a", "pi-b", "pi-c"] {
            add_device(&s, id, "{}", None, false).await;
        }
        writing!(s, |ex| sqlx::query(
            "UPDATE devices SET revoked_at = 5 WHERE id = 'pi-c'"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let keys = ["k1".to_owned(), "k2".to_owned()];
        assert_eq!(
            s.devices_to_announce(&keys).await.unwrap(),
            ["pi-a", "pi-b"]
        );
        assert!(s.devices_to_announce(&[]).await.unwrap().is_empty());

        // One key confirmed is not enough; both are.
        s.ack_release_keys("pi-a", &keys[..1], "c1").await.unwrap();
        assert_eq!(
            s.devices_to_announce(&keys).await.unwrap(),
            ["pi-a", "pi-b"]
        );
        s.ack_release_keys("pi-a", &keys, "c2").await.unwrap();
        assert_eq!(s.devices_to_announce(&keys).await.unwrap(), ["pi-b"]);
        assert_eq!(s.acked_release_keys("pi-a").await.unwrap(), keys);
        // A new key makes the device due again.
        let rotated = ["k2".to_owned(), "k3".to_owned()];
        assert_eq!(
            s.devices_to_announce(&rotated).await.unwrap(),
            ["pi-a", "pi-b"]
        );

        // An announcement on its way is not repeated.
        s.insert_commands(&[NewCommand {
            id: CommandId([1; 16]),
            device: "pi-b".into(),
            action: Action::TrustReleaseKeys {
                keys: vec![[9; 32]],
            },
            expires_at: i64::MAX,
            answer_timeout_ms: 1_000,
        }])
        .await
        .unwrap();
        assert_eq!(
            s.devices_to_announce(&keys).await.unwrap(),
            Vec::<String>::new()
        );
    }
}

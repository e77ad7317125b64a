//! SQL for the command key history (`command_keys`) and which keys each device trusts
//! (`command_key_acks`).

use super::{Store, StoreError, now_ms};

/// One key of the history.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CommandKeyRow {
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub signed_by: Option<String>,
    pub signature: Option<Vec<u8>>,
    pub created_at: i64,
    pub retire_at: Option<i64>,
    pub announce_from: i64,
}

impl Store {
    /// The history, oldest first.
    pub async fn command_keys(&self) -> Result<Vec<CommandKeyRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(concat!(
            "SELECT key_id, public_key, signed_by, signature, created_at, retire_at, ",
            "announce_from FROM command_keys ORDER BY created_at, key_id"
        ))
        .fetch_all(ex)
        .await)?)
    }

    /// Starts the history with the key in use, unless it has begun.
    pub async fn ensure_first_command_key(
        &self,
        key_id: &str,
        public_key: &[u8],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let n: i64 = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT COUNT(*) FROM command_keys"
        )
        .fetch_one(ex)
        .await)?;
        if n == 0 {
            let now = now_ms();
            in_tx!(tx, |ex| sqlx::query(concat!(
                "INSERT INTO command_keys (key_id, public_key, created_at, announce_from) ",
                "VALUES ($1, $2, $3, $4)"
            ))
            .bind(key_id)
            .bind(public_key)
            .bind(now)
            .bind(now)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends `key` (signed by the newest key so far) and sets when the key it supersedes
    /// stops signing.
    pub async fn add_command_key(
        &self,
        key: &CommandKeyRow,
        previous_retire_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE command_keys SET retire_at = $1 WHERE key_id = $2"
        )
        .bind(previous_retire_at)
        .bind(&key.signed_by)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(concat!(
            "INSERT INTO command_keys (key_id, public_key, signed_by, signature, created_at, ",
            "announce_from) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&key.key_id)
        .bind(&key.public_key)
        .bind(&key.signed_by)
        .bind(&key.signature)
        .bind(key.created_at)
        .bind(key.announce_from)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends the overlap now: every key but `newest` stops signing, and devices are told
    /// again (confirmations from before now do not count), so they drop the old keys.
    pub async fn finish_command_keys(&self, newest: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        in_tx!(tx, |ex| sqlx::query(concat!(
            "UPDATE command_keys SET retire_at = $1 WHERE key_id <> $2 ",
            "AND (retire_at IS NULL OR retire_at > $3)"
        ))
        .bind(now)
        .bind(newest)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE command_keys SET announce_from = $1 WHERE key_id = $2"
        )
        .bind(now)
        .bind(newest)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that `device` trusts `key_ids`: by the announcement `command`, or (`None`)
    /// from enrollment.
    pub async fn ack_command_keys(
        &self,
        device: &str,
        key_ids: &[String],
        command: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        for k in key_ids {
            in_tx!(tx, |ex| sqlx::query(concat!(
                "INSERT INTO command_key_acks (device_id, key_id, command_id, acked_at) ",
                "VALUES ($1, $2, $3, $4) ON CONFLICT (device_id, key_id) DO UPDATE SET ",
                "command_id = excluded.command_id, acked_at = excluded.acked_at"
            ))
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

    /// The command key ids `device` is known to trust.
    pub async fn acked_command_keys(&self, device: &str) -> Result<Vec<String>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT key_id FROM command_key_acks WHERE device_id = $1 ORDER BY key_id",
        )
        .bind(device)
        .fetch_all(ex)
        .await)?)
    }

    /// Unrevoked devices that have not confirmed `key_id` since `since`, sorted.
    pub async fn devices_without_command_key(
        &self,
        key_id: &str,
        since: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(concat!(
            "SELECT d.id FROM devices d WHERE d.revoked_at IS NULL AND NOT EXISTS ",
            "(SELECT 1 FROM command_key_acks a WHERE a.device_id = d.id AND a.key_id = $1 ",
            "AND a.acked_at >= $2) ORDER BY d.id"
        ))
        .bind(key_id)
        .bind(since)
        .fetch_all(ex)
        .await)?)
    }

    /// Those of [`Store::devices_without_command_key`] with no announcement since `since`
    /// that is on its way or came to an end other than expiry: a device that refused one
    /// (an agent too old to know it) is not asked again at every tick.
    pub async fn devices_to_announce_command_key(
        &self,
        key_id: &str,
        since: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(concat!(
            "SELECT d.id FROM devices d WHERE d.revoked_at IS NULL AND NOT EXISTS ",
            "(SELECT 1 FROM command_key_acks a WHERE a.device_id = d.id AND a.key_id = $1 ",
            "AND a.acked_at >= $2) AND NOT EXISTS (SELECT 1 FROM commands c ",
            "WHERE c.device_id = d.id AND c.action_kind = 'trust_command_keys' ",
            "AND c.created_at >= $3 AND c.status NOT IN ('expired', 'cancelled')) ",
            "ORDER BY d.id"
        ))
        .bind(key_id)
        .bind(since)
        .bind(since)
        .fetch_all(ex)
        .await)?)
    }
}

#[cfg(test)]
mod tests {
    use pifleet_shared::command::{Action, CommandId};

    use super::super::NewCommand;
    use super::super::testkit::{add_device, store};
    use super::*;

    fn key(id: &str, prev: Option<&str>, at: i64) -> CommandKeyRow {
        CommandKeyRow {
            key_id: id.into(),
            public_key: vec![1; 32],
            signed_by: prev.map(Into::into),
            signature: prev.map(|_| vec![2; 64]),
            created_at: at,
            retire_at: None,
            announce_from: at,
        }
    }

    #[tokio::test]
    async fn the_history_and_who_has_confirmed_what() {
        let (_dir, s) = store().await;
        for id in ["pi-a", "pi-b"] {
            add_device(&s, id, "{}", None, false).await;
        }
        s.ensure_first_command_key("k0", &[1; 32]).await.unwrap();
        s.ensure_first_command_key("other", &[3; 32]).await.unwrap();
        let first = s.command_keys().await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].key_id, "k0");

        let since = now_ms();
        s.add_command_key(&key("k1", Some("k0"), since), since + 1_000)
            .await
            .unwrap();
        let keys = s.command_keys().await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].retire_at, Some(since + 1_000));
        assert_eq!(keys[1], key("k1", Some("k0"), since));

        assert_eq!(
            s.devices_to_announce_command_key("k1", since)
                .await
                .unwrap(),
            ["pi-a", "pi-b"]
        );
        s.ack_command_keys("pi-a", &["k1".into()], Some("c1"))
            .await
            .unwrap();
        assert_eq!(s.acked_command_keys("pi-a").await.unwrap(), ["k1"]);
        // An announcement refused by the device is not repeated; an expired one is.
        for (n, status) in [(1u8, "rejected"), (2, "expired")] {
            s.insert_commands(&[NewCommand {
                id: CommandId([n; 16]),
                device: "pi-b".into(),
                action: Action::Ping,
                expires_at: i64::MAX,
                answer_timeout_ms: 1_000,
            }])
            .await
            .unwrap();
            writing!(s, |ex| sqlx::query(
                "UPDATE commands SET action_kind = 'trust_command_keys', status = $1 WHERE id = $2",
            )
            .bind(status)
            .bind(CommandId([n; 16]).to_string())
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        }
        assert!(
            s.devices_to_announce_command_key("k1", since)
                .await
                .unwrap()
                .is_empty()
        );
        writing!(s, |ex| sqlx::query(
            "UPDATE commands SET status = 'expired'"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        assert_eq!(
            s.devices_to_announce_command_key("k1", since)
                .await
                .unwrap(),
            ["pi-b"]
        );
        assert_eq!(
            s.devices_without_command_key("k1", since).await.unwrap(),
            ["pi-b"]
        );

        // Finishing: old keys stop signing, and everyone is asked to confirm again.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        s.finish_command_keys("k1").await.unwrap();
        let keys = s.command_keys().await.unwrap();
        assert!(keys[0].retire_at.unwrap() <= now_ms());
        assert_eq!(keys[1].retire_at, None);
        assert_eq!(
            s.devices_without_command_key("k1", keys[1].announce_from)
                .await
                .unwrap(),
            ["pi-a", "pi-b"]
        );
    }
}

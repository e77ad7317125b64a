//! SQL for backups: a consistent copy of the live database, and the checks and fixes run on
//! such a copy (a standalone file, never the live database).

use std::path::Path;

use sqlx::Connection;

use super::{Store, StoreError, db, dialect, now_ms};

/// What a database copy holds, read for a backup's metadata and checked on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInfo {
    /// The newest migration applied to the copy.
    pub schema_version: i64,
    pub devices: i64,
    pub samples: i64,
}

/// Why a copy is not sound: the lines `PRAGMA integrity_check` reported.
#[derive(Debug, thiserror::Error)]
#[error("database integrity check failed: {}", .0.join("; "))]
pub struct Corrupt(pub Vec<String>);

/// The newest migration this binary knows; a copy with a newer one came from a newer
/// controller and cannot be opened by this one.
pub fn latest_schema_version() -> i64 {
    dialect::sqlite::latest_migration()
}

impl Store {
    /// Writes a consistent snapshot of the database to `dest` (which must not exist yet)
    /// while the controller keeps writing. It runs on a connection of its own, so the
    /// writer connection (ingest) is never held up by the copy.
    pub async fn snapshot_into(&self, dest: &Path) -> Result<(), StoreError> {
        let db::Db::Sqlite { reader, .. } = &self.db else {
            return Err(StoreError::Unsupported(
                "a PostgreSQL store is backed up with pg_dump (docs/SCALING.md), not by the controller",
            ));
        };
        let opts = (*reader.connect_options()).clone().read_only(false);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
        let dest = dest.to_string_lossy().into_owned();
        let done = sqlx::query(dialect::sqlite::SNAPSHOT_INTO)
            .bind(dest)
            .execute(&mut conn)
            .await;
        conn.close().await?;
        done?;
        Ok(())
    }
}

/// Runs `PRAGMA integrity_check` on a database copy, then reads what it holds.
pub async fn check_copy(path: &Path) -> Result<Result<CopyInfo, Corrupt>, StoreError> {
    let mut conn = dialect::sqlite::open_file(path, true).await?;
    let lines: Vec<String> = sqlx::query_scalar(dialect::sqlite::INTEGRITY_CHECK)
        .fetch_all(&mut conn)
        .await?;
    if lines != ["ok"] {
        conn.close().await?;
        return Ok(Err(Corrupt(lines)));
    }
    let schema_version: Option<i64> =
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&mut conn)
            .await?;
    let devices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices")
        .fetch_one(&mut conn)
        .await?;
    let samples: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(Ok(CopyInfo {
        schema_version: schema_version.unwrap_or(0),
        devices,
        samples,
    }))
}

/// Revokes, in a restored copy, every single-use enrollment token still unused: each was
/// handed out before the backup and may have been used since, so none may enroll a device
/// again. Provisioning tokens (baked into SD-card images) keep working unless revoked: their
/// count may let a few devices more enroll than before the loss, which is what they are
/// for. Returns how many were revoked.
pub async fn revoke_unused_tokens(path: &Path) -> Result<u64, StoreError> {
    let mut conn = dialect::sqlite::open_file(path, false).await?;
    let r = sqlx::query(
        "UPDATE enrollment_tokens SET revoked_at = $1 \
         WHERE used_at IS NULL AND revoked_at IS NULL AND max_uses IS NULL",
    )
    .bind(now_ms())
    .execute(&mut conn)
    .await;
    conn.close().await?;
    Ok(r?.rows_affected())
}

/// Expires, in a restored copy, the commands that were waiting to go out (queued) or for
/// the device to take them (sent): they are not sent again blindly after a restore, as if
/// the controller had been down past their lifetime. Commands a device already accepted
/// keep their state; its receipts still arrive. Returns how many were expired.
pub async fn expire_waiting_commands(path: &Path) -> Result<u64, StoreError> {
    let mut conn = dialect::sqlite::open_file(path, false).await?;
    let r = sqlx::query(
        "UPDATE commands SET status = 'expired', \
         reason = 'the controller was restored from a backup', finished_at = $1 \
         WHERE status IN ('queued', 'sent')",
    )
    .bind(now_ms())
    .execute(&mut conn)
    .await;
    conn.close().await?;
    Ok(r?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_snapshot_is_sound_and_its_tokens_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("live.db"), true)
            .await
            .unwrap();
        store
            .insert_token(&crate::store::NewToken {
                id: "t1",
                secret_hash: "hash",
                name: None,
                labels: &Default::default(),
                expires_at: now_ms() + 60_000,
                max_uses: None,
                require_approval: false,
            })
            .await
            .unwrap();
        let copy = dir.path().join("copy.db");
        store.snapshot_into(&copy).await.unwrap();
        // The destination must be new: a second snapshot onto it fails.
        assert!(store.snapshot_into(&copy).await.is_err());
        let info = check_copy(&copy).await.unwrap().unwrap();
        assert_eq!(info.schema_version, latest_schema_version());
        assert_eq!((info.devices, info.samples), (0, 0));
        store
            .insert_token(&crate::store::NewToken {
                id: "p1",
                secret_hash: "hash2",
                name: None,
                labels: &Default::default(),
                expires_at: now_ms() + 60_000,
                max_uses: Some(10),
                require_approval: false,
            })
            .await
            .unwrap();
        let copy2 = dir.path().join("copy2.db");
        store.snapshot_into(&copy2).await.unwrap();
        assert_eq!(
            revoke_unused_tokens(&copy2).await.unwrap(),
            1,
            "the provisioning token keeps working"
        );
        assert_eq!(revoke_unused_tokens(&copy).await.unwrap(), 1);
        assert_eq!(revoke_unused_tokens(&copy).await.unwrap(), 0);
        // The live database still has its token unused.
        let live = store.list_tokens().await.unwrap();
        assert!(live[0].revoked_at.is_none());
        store.close().await;
    }

    #[tokio::test]
    async fn a_damaged_copy_fails_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("live.db"), true)
            .await
            .unwrap();
        let copy = dir.path().join("copy.db");
        store.snapshot_into(&copy).await.unwrap();
        store.close().await;
        let mut bytes = std::fs::read(&copy).unwrap();
        // Garble every page past the first, keeping the header so it still opens.
        for b in bytes.iter_mut().skip(4096) {
            *b = 0xa5;
        }
        std::fs::write(&copy, &bytes).unwrap();
        if let Ok(Ok(info)) = check_copy(&copy).await {
            panic!("a damaged copy passed: {info:?}");
        }
    }
}

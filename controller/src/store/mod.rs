//! All SQL lives here, one file per table with that table's queries and row types
//! (`devices`, `certificates`, `tokens`, `telemetry`, `commands`, `audit`, `users`,
//! `sessions`, `attempts`, `approvals`, `api_tokens`, `releases`, `release_keys`,
//! `unit_events`; `ingest` writes a batch across tables; `snapshot` copies the database for
//! backups). This file holds the [`Store`] handle and what every
//! table shares.
//!
//! SQLite in WAL mode with `synchronous = FULL` (an acknowledged sample must survive power
//! loss); one writer connection used by the ingest task for group commits, and a small reader
//! pool. Statements stay portable to PostgreSQL; what is SQLite's own is in `dialect`.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;

pub mod api_tokens;
pub mod approvals;
pub mod attempts;
mod audit;
mod ca_rotation;
mod certificates;
mod command_keys;
mod commands;
mod devices;
mod dialect;
pub mod enrollment_requests;
mod ingest;
#[cfg(any(test, feature = "testkit"))]
pub mod pg_cluster;
mod release_keys;
mod releases;
pub mod review;
pub mod rollouts;
pub mod sessions;
pub mod snapshot;
mod telemetry;
#[cfg(test)]
pub(crate) mod testkit;
mod tokens;
mod unit_events;
pub mod users;

pub use crate::model::labels::Labels;
pub use audit::AuditCheck;
pub use certificates::{CertRow, DeviceKey, RenewError, RenewRefusal, RenewedCert};
pub use command_keys::CommandKeyRow;
pub use commands::{Cancel, CommandRow, NewCommand, ReceiptUpdate};
pub use devices::{
    Applicant, DeviceCounts, DeviceRow, EnrollError, EnrollRefusal, NewDevice, RevokeOutcome,
    THROTTLED_NOW, THROTTLED_UNDER_VOLTAGE,
};
pub use ingest::IngestOp;
pub use releases::{NewReleaseRow, ReleaseRow, ReleaseSource, ReleaseTx};
pub use tokens::{NewToken, TokenRow};

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("background task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// True when the database itself is broken (corrupt, or not a database any more):
    /// retrying cannot help, and the controller should stop rather than run half alive.
    /// Anything else (locked, full or failing disk, a lost connection) may pass.
    pub fn is_fatal(&self) -> bool {
        let Self::Sqlx(sqlx::Error::Database(e)) = self else {
            return false;
        };
        dialect::is_broken(e.as_ref())
    }
}

/// Saturating u64 → i64 for SQL integers (values past i64::MAX do not occur in practice).
pub fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Handle to the database.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
}

impl Store {
    /// Opens (creating if asked) the database and runs migrations; a write waits up to
    /// 10 s for another process holding the write lock.
    pub async fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        Self::open_with(path, create, Duration::from_secs(10)).await
    }

    /// [`Store::open`] with the time a write waits for the write lock (`store.busy_timeout_ms`).
    pub async fn open_with(
        path: &Path,
        create: bool,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let (writer, reader) = dialect::connect(path, create, busy_timeout).await?;
        Ok(Self { writer, reader })
    }

    /// Starts a write transaction that holds the write lock from its first statement
    /// ([`dialect::BEGIN_WRITE`]), waiting its turn behind other writers, other processes
    /// included. Every transaction that writes starts here.
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with(dialect::BEGIN_WRITE).await?)
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    /// Closes both pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer connection handed back inside an open transaction (what a failed COMMIT
    /// can leave behind) is replaced, so the next write is really committed.
    #[tokio::test]
    async fn a_writer_left_in_a_transaction_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path, true).await.unwrap();
        {
            let mut conn = store.writer.acquire().await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
        }
        sqlx::query("INSERT INTO meta (key, value) VALUES ('probe', 'x')")
            .execute(&store.writer)
            .await
            .unwrap();
        // A separate connection sees the row only if it was committed.
        let other = Store::open(&path, false).await.unwrap();
        let v: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'probe'")
            .fetch_optional(&other.reader)
            .await
            .unwrap();
        assert_eq!(v.as_deref(), Some("x"));
    }
}

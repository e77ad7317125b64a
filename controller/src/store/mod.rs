//! All SQL lives here, one file per table with that table's queries and row types
//! (`devices`, `certificates`, `tokens`, `telemetry`, `commands`, `audit`, `users`,
//! `sessions`, `attempts`, `approvals`, `api_tokens`, `releases`, `release_keys`,
//! `unit_events`, `published_crl`; `ingest` writes a batch across tables; `snapshot` copies the database for
//! backups; `copy` moves a SQLite fleet into PostgreSQL). This file holds the [`Store`] handle and what every
//! table shares.
//!
//! Two databases behind one handle (`db`): SQLite, embedded, in WAL mode with
//! `synchronous = FULL` (an acknowledged sample must survive power loss), with one writer
//! connection used by the ingest task for group commits and a small reader pool; or
//! PostgreSQL, shared by the replicas of the scale-out mode. Every statement is written once
//! in the SQL both share; what differs is in `dialect`, and each has its own migrations
//! (`migrations/`, `migrations-postgres/`).

use std::path::Path;
use std::time::Duration;

#[macro_use]
pub(crate) mod db;
pub mod api_tokens;
pub mod approvals;
pub mod attempts;
mod audit;
mod ca_rotation;
mod certificates;
pub mod changes;
mod command_keys;
mod commands;
pub mod copy;
mod devices;
mod dialect;
pub mod enrollment_requests;
mod ingest;
mod ingest_pg;
mod key_set;
#[cfg(any(test, feature = "testkit"))]
pub mod pg_cluster;
mod published_crl;
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
pub use published_crl::StoredCrl;
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
    #[error("not possible on this database: {0}")]
    Unsupported(&'static str),
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
        dialect::sqlite::is_broken(e.as_ref()) || dialect::postgres::is_broken(e.as_ref())
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
    pub(crate) db: db::Db,
}

impl Store {
    /// Opens (creating if asked) the SQLite database at `path` and runs migrations; a write
    /// waits up to 10 s for another process holding the write lock.
    pub async fn open(path: &Path, create: bool) -> Result<Self, StoreError> {
        Self::open_with(path, create, Duration::from_secs(10)).await
    }

    /// [`Store::open`] with the time a write waits for the write lock (`store.busy_timeout_ms`).
    pub async fn open_with(
        path: &Path,
        create: bool,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let (writer, reader) = dialect::sqlite::connect(path, create, busy_timeout).await?;
        Ok(Self {
            db: db::Db::Sqlite { writer, reader },
        })
    }

    /// Connects to the PostgreSQL database at `url` and runs its migrations (which are
    /// serialized between replicas starting together).
    pub async fn open_postgres(url: &str, opts: &PgOptions) -> Result<Self, StoreError> {
        let pool = dialect::postgres::connect(url, opts).await?;
        Ok(Self {
            db: db::Db::Postgres { pool },
        })
    }

    /// Connects to the PostgreSQL database at `url` to read it only: no migrations (a
    /// read-only role may run it), and no connection until the first query, so that a
    /// database away at start-up is an error of that query, not of this call.
    pub fn connect_postgres_reader(url: &str, opts: &PgOptions) -> Result<Self, StoreError> {
        let pool = dialect::postgres::connect_reader(url, opts)?;
        Ok(Self {
            db: db::Db::Postgres { pool },
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.db {
            db::Db::Sqlite { .. } => Backend::Sqlite,
            db::Db::Postgres { .. } => Backend::Postgres,
        }
    }

    /// Starts a write transaction that runs alone: on SQLite it holds the write lock from
    /// its first statement (`BEGIN IMMEDIATE`), on PostgreSQL it takes a cluster-wide
    /// transaction lock first, so that a transaction that reads and then decides (a token's
    /// uses, the last enabled admin, a rollout's next wave) sees no other replica's write
    /// in between, exactly as on SQLite. Every transaction that writes starts here, except
    /// the ingest batch ([`Store::ingest_tx`]).
    pub(crate) async fn write_tx(&self) -> Result<db::Tx, StoreError> {
        match &self.db {
            db::Db::Sqlite { writer, .. } => Ok(db::Tx::Sqlite(
                writer.begin_with(dialect::sqlite::BEGIN_WRITE).await?,
            )),
            db::Db::Postgres { pool } => {
                let mut tx = pool.begin().await?;
                sqlx::query(dialect::postgres::LOCK_XACT)
                    .bind(dialect::postgres::lock::WRITERS)
                    .execute(&mut *tx)
                    .await?;
                Ok(db::Tx::Postgres(tx))
            }
        }
    }

    /// The ingest batch's transaction. On PostgreSQL it does not wait for the writers' lock:
    /// its inserts are idempotent on (device, seq) and its updates touch each device's own
    /// row in device order, so replicas ingesting at once cannot corrupt or deadlock each
    /// other. On SQLite it is [`Store::write_tx`].
    pub(crate) async fn ingest_tx(&self) -> Result<db::Tx, StoreError> {
        match &self.db {
            db::Db::Sqlite { .. } => self.write_tx().await,
            db::Db::Postgres { pool } => Ok(db::Tx::Postgres(pool.begin().await?)),
        }
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        reading!(self, |ex| sqlx::query("SELECT 1")
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Closes the pools (on SQLite, checkpointing the WAL).
    pub async fn close(&self) {
        match &self.db {
            db::Db::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            db::Db::Postgres { pool } => pool.close().await,
        }
    }
}

/// The two databases the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub use dialect::postgres::PgOptions;

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
            let db::Db::Sqlite { writer, .. } = &store.db else {
                unreachable!()
            };
            let mut conn = writer.acquire().await.unwrap();
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
        }
        writing!(store, |ex| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('probe', 'x')"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        // A separate connection sees the row only if it was committed.
        let other = Store::open(&path, false).await.unwrap();
        let v: Option<String> = reading!(other, |ex| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = 'probe'"
        )
        .fetch_optional(ex)
        .await)
        .unwrap();
        assert_eq!(v.as_deref(), Some("x"));
    }
}

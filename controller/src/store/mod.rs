//! All SQL lives here. SQLite in WAL mode with `synchronous = FULL` (an acknowledged sample
//! must survive power loss); one writer connection used by the ingest task for group commits,
//! and a small reader pool. Statements stay portable to PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub mod attempts;
mod audit;
mod commands;
mod fleet;
mod ingest;
mod releases;
pub mod users;
pub use audit::AuditCheck;
pub use commands::{Cancel, CommandRow, NewCommand, ReceiptUpdate};
pub use fleet::{THROTTLED_NOW, THROTTLED_UNDER_VOLTAGE};
pub use releases::{NewReleaseRow, ReleaseRow, ReleaseSource, ReleaseTx};

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
        // Primary result codes (the low byte of extended ones): SQLITE_CORRUPT 11,
        // SQLITE_NOTADB 26.
        e.code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 11 | 26))
    }
}

/// What revoking a device did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// No such device.
    Unknown,
    /// Revoked now, with its certificates.
    Revoked,
    /// It was revoked before.
    AlreadyRevoked,
}

pub use crate::model::labels::Labels;

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

/// A stored enrollment token (never the secret itself).
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub name: Option<String>,
    pub labels: Labels,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by: Option<String>,
    pub revoked_at: Option<i64>,
}

/// A device as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRow {
    pub id: String,
    pub labels: Labels,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub online: bool,
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub model: Option<String>,
    pub last_seq: Option<i64>,
}

/// A certificate issued to a device.
#[derive(Debug, Clone)]
pub struct CertRow {
    pub serial: String,
    pub device_id: String,
    pub revoked_at: Option<i64>,
}

/// One change for the ingest writer; a batch of them commits in one transaction.
#[derive(Debug, Clone)]
pub enum IngestOp {
    Telemetry {
        device: DeviceId,
        samples: Vec<v1::Sample>,
    },
    Hello {
        device: DeviceId,
        hello: v1::Hello,
    },
    Online {
        device: DeviceId,
        online: bool,
    },
    Capabilities {
        device: DeviceId,
        capabilities: v1::Capabilities,
    },
    Services {
        device: DeviceId,
        states: Vec<v1::ServiceState>,
    },
}

impl IngestOp {
    /// The device the operation is about.
    pub fn device(&self) -> &DeviceId {
        match self {
            Self::Telemetry { device, .. }
            | Self::Hello { device, .. }
            | Self::Online { device, .. }
            | Self::Capabilities { device, .. }
            | Self::Services { device, .. } => device,
        }
    }
}

/// What a new enrollment writes.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: DeviceId,
    pub labels: Labels,
    pub serial: String,
    pub not_after: i64,
    /// The certificate's public key, for verifying the device's signed receipts.
    pub public_key_alg: &'static str,
    pub public_key: Vec<u8>,
}

/// Why an enrollment was refused by the database state.
#[derive(Debug, thiserror::Error)]
pub enum EnrollRefusal {
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("enrollment token already used")]
    UsedToken,
    #[error("enrollment token expired")]
    ExpiredToken,
    #[error("enrollment token revoked")]
    RevokedToken,
    #[error("device id {0} is already enrolled")]
    DeviceExists(String),
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
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout)
            .statement_cache_capacity(256);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // A failed COMMIT (disk full, I/O error) can leave SQLite inside a transaction
            // the driver believes is over; later single statements would then land in it
            // and never be committed. A connection that cannot start a transaction when it
            // is handed back is therefore closed (rolling everything back) and replaced.
            .after_release(|conn, _| {
                Box::pin(async move {
                    let clean = sqlx::raw_sql("BEGIN; ROLLBACK;")
                        .execute(conn)
                        .await
                        .is_ok();
                    if !clean {
                        tracing::error!(
                            "database writer connection left a transaction open; reconnecting"
                        );
                    }
                    Ok(clean)
                })
            })
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    /// Starts a write transaction that holds the write lock from its first statement.
    ///
    /// SQLite starts a plain `BEGIN` as a reader and upgrades it at its first write; when
    /// another process (the CLI beside a running controller) wrote in between, the upgrade
    /// fails at once with "database is locked", without waiting for the busy timeout.
    /// `BEGIN IMMEDIATE` takes the lock up front and waits its turn instead. Every
    /// transaction that writes starts here; this is the one SQLite-only statement of the
    /// store.
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
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

    // ---- enrollment tokens ------------------------------------------------------------

    /// Stores a new token by the hash of its secret.
    pub async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        name: Option<&DeviceId>,
        labels: &Labels,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, secret_hash, name, labels, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(secret_hash)
        .bind(name.map(DeviceId::as_str))
        .bind(serde_json::to_string(labels)?)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// All tokens, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, labels, created_at, expires_at, used_at, used_by, revoked_at \
             FROM enrollment_tokens ORDER BY created_at DESC",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// Revokes an unused token; returns false if there was no such unused token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = ? \
             WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Consumes a token and records the device and its certificate, all or nothing.
    /// `issue` picks the device id from the token and signs the certificate; if it fails,
    /// or any check fails, nothing is written and the token stays usable.
    pub async fn enroll<T, E, F>(
        &self,
        secret_hash: &str,
        issue: F,
    ) -> Result<Result<(NewDevice, T), EnrollError<E>>, StoreError>
    where
        F: FnOnce(&TokenRow) -> Result<(NewDevice, T), E>,
    {
        let now = now_ms();
        // An unknown token (what a stranger guessing tokens sends) is refused from a
        // reader, without waiting for the write lock that ingest needs.
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM enrollment_tokens WHERE secret_hash = ?")
                .bind(secret_hash)
                .fetch_optional(&self.reader)
                .await?;
        if known.is_none() {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::UnknownToken)));
        }
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT id, name, labels, created_at, expires_at, used_at, used_by, revoked_at \
             FROM enrollment_tokens WHERE secret_hash = ?",
        )
        .bind(secret_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::UnknownToken)));
        };
        let token = token_row(&row)?;
        let refusal = if token.revoked_at.is_some() {
            Some(EnrollRefusal::RevokedToken)
        } else if token.used_at.is_some() {
            Some(EnrollRefusal::UsedToken)
        } else if token.expires_at <= now {
            Some(EnrollRefusal::ExpiredToken)
        } else {
            None
        };
        if let Some(r) = refusal {
            return Ok(Err(EnrollError::Refused(r)));
        }
        let (device, extra) = match issue(&token) {
            Ok(d) => d,
            Err(e) => return Ok(Err(EnrollError::Issue(e))),
        };
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM devices WHERE id = ?")
            .bind(device.id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::DeviceExists(
                device.id.to_string(),
            ))));
        }
        sqlx::query("INSERT INTO devices (id, labels, enrolled_at) VALUES (?, ?, ?)")
            .bind(device.id.as_str())
            .bind(serde_json::to_string(&device.labels)?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO certificates (serial, device_id, issued_at, not_after, public_key_alg, \
             public_key) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&device.serial)
        .bind(device.id.as_str())
        .bind(now)
        .bind(device.not_after * 1000)
        .bind(device.public_key_alg)
        .bind(&device.public_key)
        .execute(&mut *tx)
        .await?;
        let used = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = ?, used_by = ? WHERE id = ? AND used_at IS NULL",
        )
        .bind(now)
        .bind(device.id.as_str())
        .bind(&token.id)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::UsedToken)));
        }
        tx.commit().await?;
        Ok(Ok((device, extra)))
    }

    // ---- devices and certificates ------------------------------------------------------

    /// One device.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>, StoreError> {
        let row = sqlx::query(DEVICE_SELECT_BY_ID)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(device_row).transpose()
    }

    /// All devices ordered by id.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = sqlx::query(DEVICE_SELECT_ALL)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(device_row).collect()
    }

    /// Marks the device and all its certificates revoked (certificates of an already
    /// revoked device too, should one have been missed).
    pub async fn revoke_device(&self, id: &str) -> Result<RevokeOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let before: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM devices WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let outcome = match before {
            None => return Ok(RevokeOutcome::Unknown),
            Some(Some(_)) => RevokeOutcome::AlreadyRevoked,
            Some(None) => RevokeOutcome::Revoked,
        };
        sqlx::query(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, ?), online = 0 WHERE id = ?",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE certificates SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The next CRL number and every revoked certificate, taken in one write transaction
    /// so that a CRL with a higher number never lists fewer certificates.
    pub async fn crl_snapshot(&self) -> Result<(u64, Vec<CertRow>), StoreError> {
        let mut tx = self.write_tx().await?;
        let cur: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'crl_number'")
                .fetch_optional(&mut *tx)
                .await?;
        let next = cur.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('crl_number', ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(next.to_string())
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT serial, device_id, revoked_at FROM certificates \
             WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial",
        )
        .fetch_all(&mut *tx)
        .await?;
        let certs = rows
            .iter()
            .map(|r| {
                Ok(CertRow {
                    serial: r.try_get("serial")?,
                    device_id: r.try_get("device_id")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok((next, certs))
    }

    /// Serials of every revoked certificate.
    pub async fn revoked_serials(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let serials: Vec<String> =
            sqlx::query_scalar("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")
                .fetch_all(&self.reader)
                .await?;
        Ok(serials.into_iter().collect())
    }

    /// Marks every device offline (at start-up: no connection survives a restart).
    pub async fn set_all_offline(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE devices SET online = 0 WHERE online <> 0")
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

/// Errors of the enrollment transaction: a refusal by state, or by the issuer callback.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError<E> {
    #[error(transparent)]
    Refused(EnrollRefusal),
    #[error(transparent)]
    Issue(E),
}

/// `SELECT <device columns> FROM devices <tail>`: one column list for every device query.
macro_rules! device_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, labels, enrolled_at, revoked_at, first_seen, last_seen, online, ",
            "agent_version, hostname, os, kernel, arch, model, last_seq FROM devices ",
            $tail
        )
    };
}
const DEVICE_SELECT_BY_ID: &str = device_select!("WHERE id = ?");
const DEVICE_SELECT_ALL: &str = device_select!("ORDER BY id");

fn device_row(r: &sqlx::sqlite::SqliteRow) -> Result<DeviceRow, StoreError> {
    let labels: String = r.try_get("labels")?;
    Ok(DeviceRow {
        id: r.try_get("id")?,
        labels: serde_json::from_str(&labels)?,
        enrolled_at: r.try_get("enrolled_at")?,
        revoked_at: r.try_get("revoked_at")?,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
        online: r.try_get::<i64, _>("online")? != 0,
        agent_version: r.try_get("agent_version")?,
        hostname: r.try_get("hostname")?,
        os: r.try_get("os")?,
        kernel: r.try_get("kernel")?,
        arch: r.try_get("arch")?,
        model: r.try_get("model")?,
        last_seq: r.try_get("last_seq")?,
    })
}

fn token_row(r: &sqlx::sqlite::SqliteRow) -> Result<TokenRow, StoreError> {
    let labels: String = r.try_get("labels")?;
    Ok(TokenRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        labels: serde_json::from_str(&labels)?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        used_at: r.try_get("used_at")?,
        used_by: r.try_get("used_by")?,
        revoked_at: r.try_get("revoked_at")?,
    })
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

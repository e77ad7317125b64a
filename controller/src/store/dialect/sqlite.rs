//! SQLite: the embedded database, one file in the data directory.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::Dialect;
use crate::store::StoreError;

/// Opens the database (creating it if asked) and runs the migrations: one writer connection
/// and a pool of read-only readers. WAL lets the readers run beside the writer;
/// `synchronous = FULL` makes a commit survive power loss; a write waits up to
/// `busy_timeout` for another process holding the write lock.
pub(crate) async fn connect(
    path: &Path,
    create: bool,
    busy_timeout: Duration,
) -> Result<(SqlitePool, SqlitePool), StoreError> {
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
    Ok((writer, reader))
}

/// Whether a database error means the database itself is broken (corrupt, or not a database
/// any more), so that retrying cannot help.
pub(crate) fn is_broken(e: &dyn DatabaseError) -> bool {
    // Primary result codes (the low byte of extended ones): SQLITE_CORRUPT 11,
    // SQLITE_NOTADB 26.
    e.code()
        .and_then(|c| c.parse::<i64>().ok())
        .is_some_and(|c| matches!(c & 0xff, 11 | 26))
}

/// Starts a transaction that takes the write lock at once.
///
/// SQLite starts a plain `BEGIN` as a reader and upgrades it at its first write; when
/// another process (the CLI beside a running controller) wrote in between, the upgrade
/// fails at once with "database is locked", without waiting for the busy timeout.
/// `BEGIN IMMEDIATE` takes the lock up front and waits its turn instead.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Writes a consistent copy of the whole database to `dest` (which must not exist) while
/// other connections keep writing: SQLite's `VACUUM INTO` reads one snapshot (WAL).
pub(crate) const SNAPSHOT_INTO: &str = "VACUUM INTO $1";

/// Checks a database file page by page; answers one row `ok` when it is sound.
pub(crate) const INTEGRITY_CHECK: &str = "PRAGMA integrity_check";

/// The newest migration this binary carries.
pub(crate) fn latest_migration() -> i64 {
    sqlx::migrate!("./migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// Opens one connection to a database file without running migrations (a backup's copy).
pub(crate) async fn open_file(
    path: &Path,
    read_only: bool,
) -> Result<sqlx::SqliteConnection, StoreError> {
    use sqlx::ConnectOptions;
    let opts = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(false)
        .read_only(read_only);
    Ok(opts.connect().await?)
}

impl Dialect for Sqlite {
    const CLAIM_ROWS_OF_C: &'static str = "";

    fn push_contains_ci(qb: &mut QueryBuilder<Self>, expr: &'static str, needle: String) {
        // SQLite's `lower` folds ASCII only, which is what the needle promises.
        qb.push("instr(lower(")
            .push(expr)
            .push("), ")
            .push_bind(needle)
            .push(") > 0");
    }

    fn push_json_text(qb: &mut QueryBuilder<Self>, column: &'static str, key: &str) {
        qb.push("json_extract(")
            .push(column)
            .push(", ")
            .push_bind(format!("$.\"{key}\""))
            .push(")");
    }

    fn json_array_any(array: &str, alias: &str, condition: &str) -> String {
        format!("EXISTS (SELECT 1 FROM json_each({array}) {alias} WHERE {condition})")
    }

    fn json_element_number(alias: &str, key: &str) -> String {
        format!("CAST(json_extract({alias}.value, '$.{key}') AS DOUBLE PRECISION)")
    }
}

//! The SQL dialect: this is the one place where the store's SQL is SQLite's rather than
//! portable SQL. Connection setup (WAL, `synchronous`, foreign keys, the busy timeout), how a
//! write transaction starts, JSON access, case-insensitive substring search, counting rows
//! by a condition, null-safe comparison, 64-bit type names and which errors mean a broken
//! database are all here, as small functions and constants the queries use. A second
//! database (PostgreSQL) is a second version of this file.
//!
//! Not here: the driver types (`sqlx::Sqlite`, `SqlitePool`) and `last_insert_rowid`, which
//! the compiler points a port at; the `?` and `?N` bind placeholders of static statements
//! (a `QueryBuilder` writes the right ones itself); and the migrations, SQLite's DDL.
//!
//! Everything formatted by these functions is a column, alias or key written in the code,
//! never a user value; user values are bound.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use super::StoreError;

/// Opens the database (creating it if asked) and runs the migrations: one writer connection
/// and a pool of read-only readers. WAL lets the readers run beside the writer;
/// `synchronous = FULL` makes a commit survive power loss; a write waits up to
/// `busy_timeout` for another process holding the write lock.
pub(super) async fn connect(
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
pub(super) fn is_broken(e: &dyn DatabaseError) -> bool {
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
pub(super) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Null-safe inequality, standard SQL's `IS DISTINCT FROM`: true when the operands differ,
/// NULL counting as a value of its own.
pub(super) const IS_DISTINCT_FROM: &str = "IS NOT";

/// `expr` as a 64-bit float (SQLite's `REAL`; PostgreSQL's is `DOUBLE PRECISION`).
pub(super) fn as_float(expr: &str) -> String {
    format!("CAST({expr} AS REAL)")
}

/// `expr` as a 64-bit integer (SQLite's `INTEGER`; PostgreSQL's is `BIGINT`).
pub(super) fn as_int64(expr: &str) -> String {
    format!("CAST({expr} AS INTEGER)")
}

/// The number of rows for which `condition` holds, 0 for none (SQLite sums a condition as
/// 0 or 1).
pub(super) fn count_if(condition: &str) -> String {
    format!("COALESCE(SUM({condition}), 0)")
}

/// Pushes a condition: `needle` occurs in the text `expr`, ignoring ASCII case. The needle
/// is bound and must already be in ASCII lower case (SQLite's `lower` folds ASCII only).
pub(super) fn push_contains_ci(qb: &mut QueryBuilder<Sqlite>, expr: &'static str, needle: String) {
    qb.push("instr(lower(")
        .push(expr)
        .push("), ")
        .push_bind(needle)
        .push(") > 0");
}

/// Pushes the value at `key` of the JSON object in the column `column` (a string for a
/// string); the key is bound.
pub(super) fn push_json_text(qb: &mut QueryBuilder<Sqlite>, column: &'static str, key: &str) {
    qb.push("json_extract(")
        .push(column)
        .push(", ")
        .push_bind(format!("$.\"{key}\""))
        .push(")");
}

/// A condition: some element of the JSON array in `array`, named `alias`, satisfies
/// `condition` (which reads the element's fields with [`json_element_field`]).
pub(super) fn json_array_any(array: &'static str, alias: &'static str, condition: &str) -> String {
    format!("EXISTS (SELECT 1 FROM json_each({array}) {alias} WHERE {condition})")
}

/// The value at `key` of the JSON object that is the element `alias` of
/// [`json_array_any`].
pub(super) fn json_element_field(alias: &'static str, key: &'static str) -> String {
    format!("json_extract({alias}.value, '$.{key}')")
}

/// Writes a consistent copy of the whole database to `dest` (which must not exist) while
/// other connections keep writing: SQLite's `VACUUM INTO` reads one snapshot (WAL).
pub(super) const SNAPSHOT_INTO: &str = "VACUUM INTO ?";

/// Checks a database file page by page; answers one row `ok` when it is sound.
pub(super) const INTEGRITY_CHECK: &str = "PRAGMA integrity_check";

/// The newest migration this binary carries.
pub(super) fn latest_migration() -> i64 {
    sqlx::migrate!("./migrations")
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// Opens one connection to a database file without running migrations (a backup's copy).
pub(super) async fn open_file(
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

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::*;
    use crate::store::testkit::store;

    /// Each fragment, run on the database, means what its documentation says (the table a
    /// second dialect must pass too).
    #[tokio::test]
    async fn fragments_mean_what_they_say() {
        let (_d, s) = store().await;
        let cases: Vec<(String, i64)> = vec![
            (format!("SELECT 'a' {IS_DISTINCT_FROM} NULL"), 1),
            (format!("SELECT NULL {IS_DISTINCT_FROM} NULL"), 0),
            (format!("SELECT 'a' {IS_DISTINCT_FROM} 'a'"), 0),
            (format!("SELECT 'a' {IS_DISTINCT_FROM} 'b'"), 1),
            (
                format!("SELECT {} FROM (SELECT 1 AS x WHERE 0)", count_if("x = 1")),
                0,
            ),
            (
                format!(
                    "SELECT {} FROM (SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 1)",
                    count_if("x = 1")
                ),
                2,
            ),
            (format!("SELECT {} / 2 = 0.5", as_float("1")), 1),
            (
                format!("SELECT {} = 9007199254740993", as_int64("9007199254740993")),
                1,
            ),
            (
                format!(
                    "SELECT {}",
                    json_array_any(
                        r#"'[{"used":1,"total":2},{"used":9,"total":10}]'"#,
                        "j",
                        &format!("{} > 8", json_element_field("j", "used"))
                    )
                ),
                1,
            ),
            (
                format!(
                    "SELECT {}",
                    json_array_any(
                        "'[]'",
                        "j",
                        &format!("{} > 8", json_element_field("j", "used"))
                    )
                ),
                0,
            ),
        ];
        for (sql, want) in cases {
            let got: i64 = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                .fetch_one(&s.reader)
                .await
                .unwrap();
            assert_eq!(got, want, "{sql}");
        }
        let bound = [
            ("kiosk", "'Kiosk-A'", 1),
            ("k-a", "'KIOSK-A'", 1),
            ("%", "'Kiosk-A'", 0),
            ("", "'x'", 1),
        ];
        for (needle, text, want) in bound {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
            push_contains_ci(&mut qb, text, needle.to_owned());
            let got: i64 = qb.build_query_scalar().fetch_one(&s.reader).await.unwrap();
            assert_eq!(got, want, "{needle:?} in {text}");
        }
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        push_json_text(&mut qb, r#"'{"site":"lobby","a b":"x"}'"#, "site");
        let got: Option<String> = qb.build_query_scalar().fetch_one(&s.reader).await.unwrap();
        assert_eq!(got.as_deref(), Some("lobby"));
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        push_json_text(&mut qb, r#"'{"site":"lobby"}'"#, "tier");
        let got: Option<String> = qb.build_query_scalar().fetch_one(&s.reader).await.unwrap();
        assert_eq!(got, None);
    }
}

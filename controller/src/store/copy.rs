//! Copying a fleet from the data dir's SQLite file into an empty PostgreSQL database
//! (`pifleet-controller store copy-to-postgres`): every table but the migrations', in
//! foreign-key order, ids kept, in one PostgreSQL transaction, so that a failure leaves the
//! target as it was.
//!
//! The columns come from PostgreSQL's catalog and are read from SQLite by name, each decoded
//! as its PostgreSQL type (0/1 become booleans); `rowid`, an identity column on PostgreSQL,
//! is SQLite's implicit rowid. Telemetry is streamed in chunks, never held whole.

use futures_util::TryStreamExt;
use sqlx::postgres::Postgres;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, QueryBuilder, Row};

use super::dialect::postgres::{LOCK_XACT, lock};
use super::{Store, StoreError, db, now_ms};

/// Every table of the fleet, parents before the tables that reference them. A table added
/// to the schema must be added here (a test compares this list with SQLite's tables).
pub const TABLES: &[&str] = &[
    "meta",
    "enrollment_tokens",
    "devices",
    "certificates",
    "telemetry",
    "commands",
    "audit_log",
    "users",
    "recovery_codes",
    "sessions",
    "refresh_tokens",
    "auth_failures",
    "auth_attempt_names",
    "mfa_tokens_used",
    "releases",
    "release_numbers",
    "approvals",
    "api_tokens",
    "release_key_acks",
    "rollouts",
    "rollout_devices",
    "rollout_events",
    "unit_events",
    "command_keys",
    "command_key_acks",
    "enrollment_requests",
    "published_crl",
];

/// The tables of a store that are not the fleet's: the migrations' bookkeeping (each
/// database runs its own).
pub const NOT_COPIED: &[&str] = &["_sqlx_migrations"];

/// Rows sent in one INSERT at most (PostgreSQL takes at most 65,535 parameters a statement).
const CHUNK_ROWS: usize = 1000;
const MAX_PARAMS: usize = 60_000;

/// Copied samples older than this before the newest get no partition of their own: they
/// land in the default partition (retention removes them in time).
const PARTITION_DAYS_BACK: i64 = 400;
const DAY_MS: i64 = 86_400_000;

/// Why a copy was refused or failed (the target is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the copy reads from a SQLite store and writes to a PostgreSQL one")]
    WrongDatabases,
    #[error(
        "the PostgreSQL database already holds a fleet ({devices} devices, {users} users): \
         copy into a new, empty database"
    )]
    TargetHoldsFleet { devices: i64, users: i64 },
    #[error("table {0} is missing from the PostgreSQL database")]
    MissingTable(&'static str),
    #[error("{table}.{column}: PostgreSQL type {ty} cannot be copied")]
    ColumnType {
        table: &'static str,
        column: String,
        ty: String,
    },
    #[error("copying {table}: {source}")]
    Table {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CopyError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Sqlx(e))
    }
}

/// What was copied.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Rows copied, per table, in [`TABLES`] order.
    pub rows: Vec<(&'static str, u64)>,
    /// Copied samples that landed in the default partition (older than the partitions made).
    pub telemetry_in_default: i64,
}

/// A column's PostgreSQL type, which decides how its SQLite value is read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Float,
    Text,
    Bytes,
    Bool,
}

#[derive(Debug)]
struct Column {
    name: String,
    kind: Kind,
    identity: bool,
}

/// One value on its way, typed so that a NULL binds as its column's type.
enum Val {
    Int(Option<i64>),
    Float(Option<f64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
}

impl Store {
    /// Copies this (SQLite) store's fleet into `target` (PostgreSQL, migrated, empty), in
    /// one transaction that holds the replicas' writers' lock, then moves every identity
    /// sequence past the copied ids. Refused when the target holds a device or a user.
    pub async fn copy_to(&self, target: &Store) -> Result<CopyReport, CopyError> {
        let (db::Db::Sqlite { reader, .. }, db::Db::Postgres { pool }) = (&self.db, &target.db)
        else {
            return Err(CopyError::WrongDatabases);
        };
        // One read transaction: every table as of the same moment.
        let mut src = reader.begin().await?;
        let mut tx = pool.begin().await?;
        sqlx::query(LOCK_XACT)
            .bind(lock::WRITERS)
            .execute(&mut *tx)
            .await?;
        let (devices, users): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM users)")
                .fetch_one(&mut *tx)
                .await?;
        if devices > 0 || users > 0 {
            return Err(CopyError::TargetHoldsFleet { devices, users });
        }
        prepare_partitions(&mut src, &mut tx).await?;
        let mut rows = Vec::with_capacity(TABLES.len());
        for &table in TABLES {
            let cols = columns(&mut tx, table).await?;
            let n = copy_table(&mut src, &mut tx, table, &cols)
                .await
                .map_err(|source| CopyError::Table { table, source })?;
            for c in cols.iter().filter(|c| c.identity) {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), \
                     COALESCE((SELECT MAX({col}) FROM {table}), 1), \
                     (SELECT MAX({col}) FROM {table}) IS NOT NULL)",
                    col = c.name
                );
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
            }
            rows.push((table, n));
        }
        let telemetry_in_default: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_default")
                .fetch_one(&mut *tx)
                .await?;
        // The read ends first: once the copy is committed, nothing may fail it.
        src.rollback().await?;
        tx.commit().await?;
        Ok(CopyReport {
            rows,
            telemetry_in_default,
        })
    }
}

/// Today's partitions and the next days' (as `serve` keeps them), and one for each day the
/// copied samples cover, back to [`PARTITION_DAYS_BACK`] days before the newest.
async fn prepare_partitions(
    src: &mut sqlx::SqliteConnection,
    tx: &mut sqlx::PgConnection,
) -> Result<(), CopyError> {
    const PREPARE: &str = "SELECT pifleet_telemetry_prepare($1, $2)";
    sqlx::query(PREPARE)
        .bind(now_ms())
        .bind(3_i32)
        .execute(&mut *tx)
        .await?;
    let (lo, hi): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(ts), MAX(ts) FROM telemetry")
            .fetch_one(&mut *src)
            .await?;
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let lo = lo.max(hi.saturating_sub(PARTITION_DAYS_BACK * DAY_MS));
        // Each call makes the day before too: every other day is enough.
        let mut day = hi;
        while day >= lo {
            sqlx::query(PREPARE)
                .bind(day)
                .bind(0_i32)
                .execute(&mut *tx)
                .await?;
            day -= 2 * DAY_MS;
        }
        sqlx::query(PREPARE)
            .bind(lo)
            .bind(0_i32)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// `table`'s columns as PostgreSQL has them.
async fn columns(
    tx: &mut sqlx::PgConnection,
    table: &'static str,
) -> Result<Vec<Column>, CopyError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT), CAST(is_identity AS TEXT) \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Err(CopyError::MissingTable(table));
    }
    rows.into_iter()
        .map(|(name, ty, identity)| {
            let kind = match ty.as_str() {
                "bigint" | "integer" | "smallint" => Kind::Int,
                "double precision" | "real" => Kind::Float,
                "text" => Kind::Text,
                "bytea" => Kind::Bytes,
                "boolean" => Kind::Bool,
                _ => {
                    return Err(CopyError::ColumnType {
                        table,
                        column: name,
                        ty,
                    });
                }
            };
            Ok(Column {
                name,
                kind,
                identity: identity == "YES",
            })
        })
        .collect()
}

/// Streams `table` from SQLite into PostgreSQL in multi-row INSERTs; the rows copied.
async fn copy_table(
    src: &mut sqlx::SqliteConnection,
    tx: &mut sqlx::PgConnection,
    table: &'static str,
    cols: &[Column],
) -> Result<u64, sqlx::Error> {
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    let list = names.join(", ");
    let select = format!("SELECT {list} FROM {table}");
    let insert = format!(
        "INSERT INTO {table} ({list}){} ",
        if cols.iter().any(|c| c.identity) {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        }
    );
    let per_insert = CHUNK_ROWS.min(MAX_PARAMS / cols.len().max(1)).max(1);
    let mut stream = sqlx::query(AssertSqlSafe(select)).fetch(&mut *src);
    let mut chunk: Vec<Vec<Val>> = Vec::with_capacity(per_insert);
    let mut copied = 0_u64;
    while let Some(row) = stream.try_next().await? {
        chunk.push(values(&row, cols)?);
        if chunk.len() == per_insert {
            copied += flush(tx, &insert, &mut chunk).await?;
        }
    }
    if !chunk.is_empty() {
        copied += flush(tx, &insert, &mut chunk).await?;
    }
    Ok(copied)
}

/// One SQLite row's values, each as its PostgreSQL column's type.
fn values(row: &SqliteRow, cols: &[Column]) -> Result<Vec<Val>, sqlx::Error> {
    cols.iter()
        .enumerate()
        .map(|(i, c)| {
            // Unchecked: SQLite's storage class follows the value, not the declaration (an
            // integer in a REAL column); the decoders convert as SQLite does.
            Ok(match c.kind {
                Kind::Int => Val::Int(row.try_get_unchecked(i)?),
                Kind::Float => Val::Float(row.try_get_unchecked(i)?),
                Kind::Text => Val::Text(row.try_get_unchecked(i)?),
                Kind::Bytes => Val::Bytes(row.try_get_unchecked(i)?),
                Kind::Bool => {
                    Val::Bool(row.try_get_unchecked::<Option<i64>, _>(i)?.map(|v| v != 0))
                }
            })
        })
        .collect()
}

async fn flush(
    tx: &mut sqlx::PgConnection,
    insert: &str,
    chunk: &mut Vec<Vec<Val>>,
) -> Result<u64, sqlx::Error> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(insert);
    qb.push_values(chunk.drain(..), |mut b, row| {
        for v in row {
            match v {
                Val::Int(v) => b.push_bind(v),
                Val::Float(v) => b.push_bind(v),
                Val::Text(v) => b.push_bind(v),
                Val::Bytes(v) => b.push_bind(v),
                Val::Bool(v) => b.push_bind(v),
            };
        }
    });
    Ok(qb.build().execute(&mut *tx).await?.rows_affected())
}

#[cfg(test)]
mod tests;

//! PostgreSQL: the database shared by the controller replicas of the scale-out mode.

use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};

use super::Dialect;
use crate::store::StoreError;

/// How a replica connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The password, from `store.password_file` or the environment; never from the URL.
    pub password: Option<String>,
    /// Connections this replica keeps at most.
    pub max_connections: u32,
    /// How long a query waits for a free connection (and a new connection for the server).
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            password: None,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Connects the pool and runs the migrations. sqlx holds a session advisory lock while it
/// migrates, so replicas starting together apply each migration once.
pub(crate) async fn connect(url: &str, opts: &PgOptions) -> Result<PgPool, StoreError> {
    let mut connect = PgConnectOptions::from_str(url)?.application_name("pifleet-controller");
    if let Some(pw) = &opts.password {
        connect = connect.password(pw);
    }
    let pool = PgPoolOptions::new()
        .max_connections(opts.max_connections)
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(connect)
        .await?;
    sqlx::migrate!("./migrations-postgres").run(&pool).await?;
    Ok(pool)
}

/// A pool that connects when first used and runs no migrations (`broker-sync`, which may
/// hold a read-only role).
pub(crate) fn connect_reader(url: &str, opts: &PgOptions) -> Result<PgPool, StoreError> {
    let mut connect = PgConnectOptions::from_str(url)?.application_name("pifleet-broker-sync");
    if let Some(pw) = &opts.password {
        connect = connect.password(pw);
    }
    Ok(PgPoolOptions::new()
        .max_connections(opts.max_connections)
        .acquire_timeout(opts.acquire_timeout)
        .connect_lazy_with(connect))
}

/// Keys of the advisory locks the replicas share (one 64-bit key space per database; these
/// spell "pifleet" and a number, so that they do not meet another application's by chance).
pub(crate) mod lock {
    const BASE: i64 = 0x7069_666c_6565_7400;
    /// Every write transaction but ingest (see `Store::write_tx`).
    pub const WRITERS: i64 = BASE | 1;
    /// Telemetry retention and partition upkeep (`store::changes::Job::Retention`).
    pub const RETENTION: i64 = BASE | 2;
    /// Deciding the rollouts: one controller's pass at a time.
    pub const ROLLOUTS: i64 = BASE | 3;
}

/// Makes the current transaction wait for, then hold until it ends, the lock bound as `$1`.
pub(crate) const LOCK_XACT: &str = "SELECT pg_advisory_xact_lock($1)";

/// Whether a database error means the data is corrupt (SQLSTATE class XX: `data_corrupted`,
/// `index_corrupted`), so that retrying cannot help. A lost connection, a full disk or a
/// server in recovery may pass.
pub(crate) fn is_broken(e: &dyn DatabaseError) -> bool {
    e.code()
        .is_some_and(|c| c.as_ref() == "XX001" || c.as_ref() == "XX002")
}

impl Dialect for Postgres {
    const CLAIM_ROWS_OF_C: &'static str = " FOR UPDATE OF c SKIP LOCKED";

    fn push_contains_ci(qb: &mut QueryBuilder<Self>, expr: &'static str, needle: String) {
        // `lower` follows the database's locale; the needle is ASCII lower case, and
        // `strpos` compares bytes, so ASCII case is what is ignored, as on SQLite.
        qb.push("strpos(lower(")
            .push(expr)
            .push("), ")
            .push_bind(needle)
            .push(") > 0");
    }

    fn push_json_text(qb: &mut QueryBuilder<Self>, column: &'static str, key: &str) {
        qb.push("(CAST(")
            .push(column)
            .push(" AS JSONB) ->> ")
            .push_bind(key.to_owned())
            .push(")");
    }

    fn json_array_any(array: &str, alias: &str, condition: &str) -> String {
        format!(
            "EXISTS (SELECT 1 FROM jsonb_array_elements(CAST({array} AS JSONB)) {alias}(value) \
             WHERE {condition})"
        )
    }

    fn json_element_number(alias: &str, key: &str) -> String {
        format!("CAST({alias}.value ->> '{key}' AS DOUBLE PRECISION)")
    }
}

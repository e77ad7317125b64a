//! A fleet database for end-to-end tests: a throwaway PostgreSQL cluster, a fresh database in
//! it, the URL a controller is given (no password) with the password in a file, and what the
//! tests count: every device's samples, stored once each.

// Test support only: a failure here is a failed test, said where it happens.
#![allow(clippy::expect_used)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use pifleet_controller::store::pg_cluster::PgCluster;
use sqlx::postgres::PgPool;

use crate::harness::wait_for;

/// A database for one test's controllers.
#[derive(Debug)]
pub struct PgFleet {
    pub cluster: PgCluster,
    /// `store.url`: no password in it.
    pub url: String,
    /// The same database with the password, for the test's own connections.
    pub with_password: String,
    pub pool: PgPool,
    /// The file holding the password (`--store-password-file`).
    pub password_file: PathBuf,
    _secrets: tempfile::TempDir,
}

impl PgFleet {
    /// Starts a cluster and makes the database. Panics on failure (tests only).
    pub async fn start() -> Self {
        let cluster = PgCluster::start().await.expect("a PostgreSQL cluster");
        let with_password = cluster.fresh_database().await.expect("a database");
        let name = with_password.rsplit('/').next().unwrap_or_default();
        let url = format!("postgres://pifleet@127.0.0.1:{}/{name}", cluster.port());
        let pool = PgPool::connect(&with_password).await.expect("a connection");
        let secrets = tempfile::tempdir().expect("a temp dir");
        let password_file = secrets.path().join("store-password");
        std::fs::write(&password_file, format!("{}\n", cluster.password()))
            .expect("the password file");
        Self {
            cluster,
            url,
            with_password,
            pool,
            password_file,
            _secrets: secrets,
        }
    }

    /// `init`'s arguments that put the fleet in this database.
    pub fn init_args(&self) -> Vec<&OsStr> {
        vec![
            OsStr::new("--store-url"),
            OsStr::new(&self.url),
            OsStr::new("--store-password-file"),
            self.password_file.as_os_str(),
        ]
    }
}

/// Samples per device: (device, rows, distinct seqs, highest seq).
pub async fn counts(pool: &PgPool) -> Vec<(String, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT device_id, COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM telemetry \
         GROUP BY device_id ORDER BY device_id",
    )
    .fetch_all(pool)
    .await
    .expect("counting samples")
}

/// Waits (a minute at most) until every device's samples 1..=max are stored, each once: what
/// was not acknowledged comes again from the agents' spools. Panics naming the device with a
/// gap or a double.
pub async fn all_stored_once(pool: &PgPool, logs: impl Fn() -> String) {
    let settled = wait_for(
        Duration::from_secs(60),
        "every sample stored once",
        || async {
            counts(pool)
                .await
                .iter()
                .all(|(_, rows, distinct, max)| rows == distinct && rows == max)
                .then_some(())
        },
    )
    .await;
    if settled.is_err() {
        for (device, rows, distinct, max) in counts(pool).await {
            assert_eq!(
                rows,
                distinct,
                "{device}: a sample stored twice\n{}",
                logs()
            );
            assert_eq!(
                rows,
                max,
                "{device}: a sample lost ({rows} rows up to seq {max})\n{}",
                logs()
            );
        }
    }
}

/// Samples per device: (device, rows, distinct seqs, lowest seq, highest seq).
pub async fn spans(pool: &PgPool) -> Vec<(String, i64, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT device_id, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM telemetry \
         GROUP BY device_id ORDER BY device_id",
    )
    .fetch_all(pool)
    .await
    .expect("counting samples")
}

/// Like [`all_stored_once`] for devices whose seqs do not start at 1 (simulated devices
/// start at the wall clock's milliseconds): waits until every device's samples are one
/// unbroken run of seqs, each stored once. Panics naming the device with a gap or a double.
pub async fn all_unbroken_once(pool: &PgPool, logs: impl Fn() -> String) {
    let whole = |(_, rows, distinct, min, max): &(String, i64, i64, i64, i64)| {
        rows == distinct && *rows == max - min + 1
    };
    let settled = wait_for(
        Duration::from_secs(60),
        "every sample stored once, without gaps",
        || async { spans(pool).await.iter().all(whole).then_some(()) },
    )
    .await;
    if settled.is_err() {
        for (device, rows, distinct, min, max) in spans(pool).await {
            assert_eq!(
                rows,
                distinct,
                "{device}: a sample stored twice\n{}",
                logs()
            );
            assert_eq!(
                rows,
                max - min + 1,
                "{device}: a sample lost ({rows} rows for seqs {min}..={max})\n{}",
                logs()
            );
        }
    }
}

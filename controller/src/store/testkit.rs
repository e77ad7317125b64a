//! Fixtures of the store's unit tests: a fresh database, devices and samples, query plans.

use pifleet_shared::DeviceId;
use pifleet_shared::proto::v1;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{IngestOp, PgOptions, Store};

/// What keeps a test's database alive: its directory (SQLite), or nothing (a PostgreSQL
/// database in the test process's shared cluster, which goes with the cluster).
pub enum Guard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Server,
}

/// A store on a fresh database: SQLite in a temporary directory, or, when
/// `PIFLEET_TEST_STORE=postgres`, a new database in a PostgreSQL cluster this test process
/// starts (`scripts/check` runs the store's tests both ways).
pub async fn store() -> (Guard, Store) {
    if std::env::var("PIFLEET_TEST_STORE").as_deref() == Ok("postgres") {
        let cluster = super::pg_cluster::shared().await.unwrap();
        let url = cluster.fresh_database().await.unwrap();
        let s = Store::open_postgres(&url, &PgOptions::default())
            .await
            .unwrap();
        return (Guard::Server, s);
    }
    let (dir, s) = sqlite_store().await;
    (Guard::Dir(dir), s)
}

/// A store on a fresh SQLite database, for what only SQLite has (query plans, file
/// snapshots, its writer connection).
pub async fn sqlite_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), true).await.unwrap();
    (dir, s)
}

/// A device row written directly, enrolled at 1 s.
pub async fn add_device(s: &Store, id: &str, labels: &str, hostname: Option<&str>, online: bool) {
    writing!(s, |ex| sqlx::query(
        "INSERT INTO devices (id, labels, enrolled_at, hostname, online) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(labels)
    .bind(1_000_i64)
    .bind(hostname)
    .bind(online)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

/// A sample with two disks (42 of 110 bytes used) and two interfaces.
pub fn sample(seq: u64, ts_ms: i64, cpu: f32, mem_used: u64) -> v1::Sample {
    v1::Sample {
        seq,
        ts_ms,
        cpu_pct: cpu,
        load1: 0.5,
        load5: 0.25,
        load15: 0.125,
        mem_total_bytes: 1_000,
        mem_used_bytes: mem_used,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![
            v1::Disk {
                mount: "/".into(),
                fs: "ext4".into(),
                total_bytes: 100,
                used_bytes: 40,
            },
            v1::Disk {
                mount: "/boot".into(),
                fs: "vfat".into(),
                total_bytes: 10,
                used_bytes: 2,
            },
        ],
        nets: vec![
            v1::Net {
                iface: "eth0".into(),
                rx_bytes: seq * 100,
                tx_bytes: seq * 10,
            },
            v1::Net {
                iface: "wlan0".into(),
                rx_bytes: 1,
                tx_bytes: 1,
            },
        ],
        temp_c: Some(50.0),
        throttled: Some(0),
        uptime_s: 60,
        spool_dropped: 0,
        spool_backlog: 0,
    }
}

/// Stores samples through the ingest batch.
pub async fn telemetry(s: &Store, device: &str, samples: Vec<v1::Sample>) {
    let op = IngestOp::Telemetry {
        device: DeviceId::parse(device).unwrap(),
        samples,
    };
    s.write_batch(&[op]).await.unwrap();
}

/// The query plan of a statement, one line per step.
/// (SQLite's: plans are each database's own.)
pub async fn plan(s: &Store, mut qb: QueryBuilder<Sqlite>) -> Vec<String> {
    let super::db::Db::Sqlite { reader, .. } = &s.db else {
        panic!("query plans are read from a SQLite store (testkit::sqlite_store)");
    };
    qb.build()
        .fetch_all(reader)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect()
}

//! The controller on PostgreSQL: `init --store-url` and `serve` work as on SQLite, real
//! agents' samples land in PostgreSQL exactly once across a kill -9 of the controller, and a
//! database that already holds a fleet is not initialised again.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::time::Duration;

use pifleet_controller::store::pg_cluster::PgCluster;
use pifleet_tests::harness::{Agent, Controller, bin, wait_for};
use sqlx::postgres::PgPool;

/// The database URL without its password (as `store.url` must be), and the pool to check
/// what the controller wrote.
async fn database(cluster: &PgCluster) -> (String, PgPool) {
    let with_password = cluster.fresh_database().await.unwrap();
    let name = with_password.rsplit('/').next().unwrap().to_owned();
    let url = format!("postgres://pifleet@127.0.0.1:{}/{name}", cluster.port());
    let pool = PgPool::connect(&with_password).await.unwrap();
    (url, pool)
}

/// How many entries a refused `init` left in the data dir (none: at most the empty dir).
fn left_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

async fn counts(pool: &PgPool) -> Vec<(String, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT device_id, COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM telemetry \
         GROUP BY device_id ORDER BY device_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_into_postgres_exactly_once_across_a_controller_kill() {
    let cluster = PgCluster::start().await.unwrap();
    let (url, pool) = database(&cluster).await;
    let secrets = tempfile::tempdir().unwrap();
    let pw = secrets.path().join("store-password");
    std::fs::write(&pw, format!("{}\n", cluster.password())).unwrap();
    let args: Vec<&OsStr> = vec![
        OsStr::new("--store-url"),
        OsStr::new(&url),
        OsStr::new("--store-password-file"),
        pw.as_os_str(),
    ];
    let mut ctl = Controller::start_init(&args, "[telemetry]\nretention_interval_s = 10")
        .await
        .unwrap();
    // Nothing went to a SQLite file: the config names the database, without the password.
    assert!(!ctl.data.join("pifleet.db").exists());
    let config = std::fs::read_to_string(ctl.data.join("config.toml")).unwrap();
    assert!(config.contains(&url) && !config.contains(cluster.password()));

    let mut agents: Vec<Agent> = ["pi-a", "pi-b"]
        .iter()
        .map(|id| Agent::enroll(&ctl, id, 1).unwrap())
        .collect();
    for a in &mut agents {
        a.start().unwrap();
    }
    wait_for(Duration::from_secs(30), "3 samples from each agent", || {
        let pool = pool.clone();
        async move {
            let c = counts(&pool).await;
            (c.len() == 2 && c.iter().all(|r| r.1 >= 3)).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    // Today's partition exists and holds them (not the default partition).
    let in_default: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry_default")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_default, 0);

    // kill -9 while the agents stream; they spool and re-send; nothing is lost or doubled.
    ctl.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctl.serve().await.unwrap();
    let before = counts(&pool).await;
    wait_for(Duration::from_secs(40), "samples after the restart", || {
        let pool = pool.clone();
        let before = before.clone();
        async move {
            let c = counts(&pool).await;
            c.iter()
                .zip(&before)
                .all(|(now, then)| now.3 >= then.3 + 5)
                .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    // What was not acknowledged before the kill comes again from the agents' spools.
    let settled = wait_for(Duration::from_secs(60), "every sample stored once", || {
        let pool = pool.clone();
        async move {
            counts(&pool)
                .await
                .iter()
                .all(|(_, rows, distinct, max)| rows == distinct && rows == max)
                .then_some(())
        }
    })
    .await;
    if settled.is_err() {
        for (device, rows, distinct, max) in counts(&pool).await {
            assert_eq!(rows, distinct, "{device}: a sample stored twice");
            assert_eq!(
                rows, max,
                "{device}: a sample lost (seq 1..{max}, {rows} rows)"
            );
        }
    }

    // The devices, their last-seen times and the admin all live in PostgreSQL.
    let online: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE online = TRUE")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(online, 2);

    // A second `init` on the same database is refused: the fleet is there already.
    let again = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("pifleet-controller").unwrap())
        .args(["init", "--hostname", "localhost", "--data-dir"])
        .arg(again.path().join("data"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds a fleet"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(left_in(&again.path().join("data")), 0);
    for a in &mut agents {
        a.stop();
    }
    ctl.stop();
}

#[tokio::test]
async fn a_password_in_the_store_url_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("pifleet-controller").unwrap())
        .args(["init", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args([
            "--store-url",
            "postgres://pifleet:hunter2@127.0.0.1:5432/pifleet",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must not carry a password"), "{err}");
    assert_eq!(left_in(&tmp.path().join("data")), 0);
}

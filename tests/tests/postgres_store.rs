//! The controller on PostgreSQL: `init --store-url` and `serve` work as on SQLite, real
//! agents' samples land in PostgreSQL exactly once across a kill -9 of the controller, and a
//! database that already holds a fleet is not initialised again.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, bin, wait_for};
use pifleet_tests::pgkit::{PgFleet, all_stored_once, counts};

/// How many entries a refused `init` left in the data dir (none: at most the empty dir).
fn left_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stream_into_postgres_exactly_once_across_a_controller_kill() {
    let db = PgFleet::start().await;
    let (cluster, url, pool, args) = (&db.cluster, db.url.clone(), db.pool.clone(), db.init_args());
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
    all_stored_once(&pool, || ctl.log()).await;

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

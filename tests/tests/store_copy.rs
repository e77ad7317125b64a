//! `store copy-to-postgres`: a fleet that ran on SQLite (real agents streaming, users,
//! sessions, a token, a command and its receipt, an audit trail) moves into PostgreSQL
//! whole; `serve` carries on there, the agents' sequence numbers continuing without a gap or
//! a duplicate. Refused while the controller runs, and into a database that holds a fleet.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_controller::store::copy::{NOT_COPIED, TABLES};
use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::pgkit::{PgFleet, counts};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Row};

const NO_AUTH_LIMIT: &str = "[auth]\nrate_per_minute = 100000\nrate_burst = 100000";

async fn sqlite_count(db: &SqlitePool, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(db)
        .await
        .unwrap()
}

async fn pg_count(db: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(db)
        .await
        .unwrap()
}

async fn pg_counts(db: &PgPool) -> Vec<i64> {
    let mut v = Vec::new();
    for t in TABLES {
        v.push(pg_count(db, t).await);
    }
    v
}

fn copy_args<'a>(url: &'a str, pw: &'a str) -> [&'a str; 6] {
    [
        "store",
        "copy-to-postgres",
        "--url",
        url,
        "--password-file",
        pw,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_fleet_moves_to_postgres_and_carries_on() {
    let db = PgFleet::start().await;
    let (url, pool) = (db.url.clone(), db.pool.clone());
    let pw = db.password_file.to_str().unwrap().to_owned();

    // A fleet on SQLite: two admins' worth of sign-ins, a spare token, two agents, a command.
    let mut ctl = Controller::start_with(NO_AUTH_LIMIT).await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    api.user(&admin, "ops", "operator").await.unwrap();
    ctl.token(Some("spare"), "1h").unwrap();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b"]
        .iter()
        .map(|id| Agent::enroll(&ctl, id, 1).unwrap())
        .collect();
    for a in &mut agents {
        a.start().unwrap();
    }
    let ping = ctl.ping("pi-a", Duration::from_secs(30)).await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "3 samples from each agent",
        || async {
            let seqs = (ctl.seqs("pi-a").await.ok()?, ctl.seqs("pi-b").await.ok()?);
            (seqs.0.len() >= 3 && seqs.1.len() >= 3).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));

    // Refused while the controller runs: nothing reaches PostgreSQL, not even the schema.
    let out = ctl.cli(&copy_args(&url, &pw)).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves this data dir"), "{err}");
    let schema: Option<String> = sqlx::query_scalar("SELECT CAST(to_regclass('devices') AS TEXT)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(schema, None);

    // Stopped (the agents keep sampling into their spools), then copied.
    ctl.stop();
    let config_before = std::fs::read_to_string(ctl.data.join("config.toml")).unwrap();
    let out = ctl.cli(&copy_args(&url, &pw)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("telemetry"), "{stdout}");

    // Every table of the SQLite file is copied, row for row.
    let lite = ctl.db().await.unwrap();
    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&lite)
    .await
    .unwrap();
    tables.retain(|t| !NOT_COPIED.contains(&t.as_str()));
    tables.sort();
    let mut listed: Vec<&str> = TABLES.to_vec();
    listed.sort_unstable();
    assert_eq!(tables, listed);
    for t in TABLES {
        let (a, b) = (sqlite_count(&lite, t).await, pg_count(&pool, t).await);
        // The copy's own audit entry is the one row PostgreSQL has more.
        let extra = i64::from(*t == "audit_log");
        assert_eq!(a + extra, b, "{t}: {a} rows in SQLite, {b} in PostgreSQL");
    }
    for t in [
        "devices",
        "users",
        "telemetry",
        "commands",
        "audit_log",
        "sessions",
    ] {
        assert!(
            sqlite_count(&lite, t).await > 0,
            "{t} is empty: a weak test"
        );
    }
    assert!(stdout.contains(&format!(
        "telemetry{}",
        " ".repeat(22 - "telemetry".len() + 1)
    )));

    // Values: labels and online flags, the first admin's password flag, command output.
    let lite_devices: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, labels, online FROM devices ORDER BY id")
            .fetch_all(&lite)
            .await
            .unwrap();
    let pg_devices: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT id, labels, online FROM devices ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(lite_devices.len(), 2);
    for (l, p) in lite_devices.iter().zip(&pg_devices) {
        assert_eq!((&l.0, &l.1, l.2 != 0), (&p.0, &p.1, p.2));
    }
    let flags: Vec<(String, bool)> =
        sqlx::query_as("SELECT name, must_change_password FROM users ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        flags,
        vec![("admin".to_owned(), false), ("ops".to_owned(), false)]
    );
    let q = "SELECT stdout, receipt, receipt_signature FROM commands WHERE id = $1";
    type Blobs = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    let a: Blobs = sqlx::query_as(q)
        .bind(&ping)
        .fetch_one(&lite)
        .await
        .unwrap();
    let b: Blobs = sqlx::query_as(q)
        .bind(&ping)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(a.0.is_some() && a.1.is_some() && a.2.is_some(), "{a:?}");
    assert_eq!(a, b);
    lite.close().await;

    // The config names the database (and the rest of it is as it was); the SQLite file
    // stays; the audit chain verifies there and ends with the copy.
    let config = std::fs::read_to_string(ctl.data.join("config.toml")).unwrap();
    assert!(config.contains(&format!("url = \"{url}\"")), "{config}");
    assert_eq!(
        config
            .replacen(&format!("url = \"{url}\"\n"), "", 1)
            .replacen(&format!("password_file = \"{pw}\"\n"), "", 1),
        config_before
    );
    assert!(ctl.data.join("pifleet.db").exists());
    let out = ctl.cli(&["audit", "verify"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = sqlx::query("SELECT action, outcome FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(last.get::<String, _>("action"), "store.copy");
    assert_eq!(last.get::<String, _>("outcome"), "ok");

    // `serve` on PostgreSQL now: the agents' spooled and new samples arrive after the
    // copied ones, without gaps or duplicates.
    let copied = counts(&pool).await;
    ctl.serve().await.unwrap();
    wait_for(Duration::from_secs(40), "samples after the copy", || {
        let pool = pool.clone();
        let copied = copied.clone();
        async move {
            let now = counts(&pool).await;
            (now.len() == 2 && now.iter().zip(&copied).all(|(n, c)| n.3 >= c.3 + 3)).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    for (device, rows, distinct, max) in counts(&pool).await {
        assert_eq!(rows, distinct, "{device}: a sample stored twice");
        assert_eq!(rows, max, "{device}: a sample lost (seq 1..{max}, {rows})");
    }
    // The old admin signs in with their password; the CLI lists both users.
    let api = Api::new(&ctl).unwrap();
    api.tokens("admin", TEST_PASSWORD).await.unwrap();
    let out = ctl.cli(&["user", "list"]).unwrap();
    let users = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && users.contains("admin") && users.contains("ops"));
    ctl.stop();
    for a in &mut agents {
        a.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_into_the_same_database_is_refused_and_changes_nothing() {
    let db = PgFleet::start().await;
    let (url, pool) = (db.url.clone(), db.pool.clone());
    let pw = db.password_file.to_str().unwrap().to_owned();

    let mut first = Controller::start().await.unwrap();
    first.stop();
    let out = first.cli(&copy_args(&url, &pw)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = pg_counts(&pool).await;
    assert!(before[TABLES.iter().position(|t| *t == "users").unwrap()] == 1);

    // Another fleet into the same database: refused, the database and the config as they were.
    let mut second = Controller::start().await.unwrap();
    second.token(Some("pi-t"), "1h").unwrap();
    second.stop();
    let config = std::fs::read(second.data.join("config.toml")).unwrap();
    let out = second.cli(&copy_args(&url, &pw)).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a fleet"), "{err}");
    assert_eq!(pg_counts(&pool).await, before);
    assert_eq!(
        std::fs::read(second.data.join("config.toml")).unwrap(),
        config
    );

    // The first data dir is on PostgreSQL now: copying it again is refused too.
    let out = first.cli(&copy_args(&url, &pw)).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in PostgreSQL"), "{err}");
    assert_eq!(pg_counts(&pool).await, before);
}

//! The throwaway cluster itself, and the PostgreSQL schema (migrations-postgres/) checked
//! against SQLite's and its telemetry partition functions exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Connection as _, Row as _};
use tokio::io::AsyncBufReadExt as _;

use super::*;

const DAY: i64 = 86_400_000;
/// 2026-12-06 12:00 UTC.
const NOW: i64 = 1_796_558_400_000;
const TODAY: i64 = NOW - DAY / 2;

/// The columns the code reads as `bool`; SQLite stores them as 0/1.
const BOOLEANS: &[(&str, &str)] = &[
    ("devices", "needs_review"),
    ("devices", "online"),
    ("enrollment_tokens", "require_approval"),
    ("rollout_devices", "revertible"),
    ("rollouts", "revert_on_abort"),
    ("users", "must_change_password"),
];

async fn migrated(cluster: &PgCluster) -> PgPool {
    let url = cluster.fresh_database().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    sqlx::migrate!("./migrations-postgres")
        .run(&pool)
        .await
        .unwrap();
    pool
}

/// Whether a process whose command line mentions `path` runs (what `pgrep -f` tells, without
/// needing procps).
fn running(path: &Path) -> bool {
    let needle = path.as_os_str().as_encoded_bytes();
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| e.file_name() != me.as_str())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
}

async fn gone_within(dir: &Path, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while running(dir) || dir.exists() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

#[tokio::test]
async fn the_schema_matches_sqlites_final_one() {
    let lite = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::migrate!("./migrations").run(&lite).await.unwrap();
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c, p.type AS ty, p.\"notnull\" AS nn, p.pk AS pk, \
         (SELECT COUNT(*) FROM pragma_table_info(m.name) q WHERE q.pk > 0) AS pks \
         FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&lite)
    .await
    .unwrap();
    let mut want = BTreeMap::new();
    let mut want_identity = BTreeSet::new();
    for r in &rows {
        let (t, c): (String, String) = (r.get("t"), r.get("c"));
        let ty: String = r.get("ty");
        let (pk, pks): (i64, i64) = (r.get("pk"), r.get("pks"));
        if ty == "INTEGER" && pk == 1 && pks == 1 {
            want_identity.insert((t.clone(), c.clone()));
        }
        let pg_type = match ty.as_str() {
            _ if BOOLEANS.contains(&(t.as_str(), c.as_str())) => "boolean",
            "INTEGER" | "BIGINT" => "bigint",
            "REAL" => "double precision",
            "BLOB" => "bytea",
            "TEXT" => "text",
            other => panic!("{t}.{c}: SQLite type {other} has no mapping"),
        };
        // SQLite lets primary key columns other than rowid aliases hold NULL; PostgreSQL not.
        let not_null = r.get::<i64, _>("nn") == 1 || pk > 0;
        want.insert((t, c), (pg_type.to_owned(), not_null));
    }
    assert!(want.len() > 150, "{} SQLite columns", want.len());
    let sqlite_indexes: BTreeSet<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_all(&lite)
    .await
    .unwrap()
    .into_iter()
    .collect();

    let pool = migrated(shared().await.unwrap()).await;
    let rows = sqlx::query(
        "SELECT c.table_name::text AS t, c.column_name::text AS c, c.data_type::text AS ty, \
         c.is_nullable::text AS nullable, c.is_identity::text AS identity \
         FROM information_schema.columns c \
         JOIN pg_class k ON k.relname = c.table_name AND k.relnamespace = 'public'::regnamespace \
         WHERE c.table_schema = 'public' AND NOT k.relispartition \
         AND c.table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut have = BTreeMap::new();
    let mut identity = BTreeSet::new();
    let mut rowids = BTreeSet::new();
    for r in &rows {
        let (t, c): (String, String) = (r.get("t"), r.get("c"));
        if c == "rowid" {
            // SQLite's implicit row id, made a column where the code reads it.
            assert_eq!(r.get::<String, _>("identity"), "YES", "{t}.rowid");
            rowids.insert(t);
            continue;
        }
        if r.get::<String, _>("identity") == "YES" {
            identity.insert((t.clone(), c.clone()));
        }
        let not_null = r.get::<String, _>("nullable") == "NO";
        have.insert((t, c), (r.get::<String, _>("ty"), not_null));
    }
    assert_eq!(have, want);
    assert_eq!(identity, want_identity);
    assert_eq!(identity.len(), 5, "{identity:?}");
    assert_eq!(
        rowids,
        BTreeSet::from([
            "api_tokens".to_owned(),
            "commands".to_owned(),
            "rollout_events".to_owned()
        ])
    );

    let pg_indexes: BTreeSet<String> = sqlx::query_scalar(
        "SELECT i.relname::text FROM pg_index x \
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
         WHERE t.relnamespace = 'public'::regnamespace AND NOT t.relispartition \
         AND t.relname <> '_sqlx_migrations' \
         AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid)",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(pg_indexes, sqlite_indexes);

    let strategy: String = sqlx::query_scalar(
        "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(strategy, "r");
    let key: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'telemetry_pkey'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(key, "PRIMARY KEY (device_id, seq, ts)");
}

async fn insert(pool: &PgPool, seq: i64, ts: i64, received_at: i64) -> u64 {
    sqlx::query(
        "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, load15, \
         mem_total, mem_used, swap_total, swap_used, uptime_s, spool_dropped, spool_backlog, \
         disks, nets) VALUES ('d1', $1, $2, $3, 1.5, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, '[]', '[]') \
         ON CONFLICT DO NOTHING",
    )
    .bind(seq)
    .bind(ts)
    .bind(received_at)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected()
}

async fn partition_of(pool: &PgPool, seq: i64) -> String {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM telemetry WHERE seq = $1")
        .bind(seq)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn prepare(pool: &PgPool, now: i64, days_ahead: i32) -> i32 {
    sqlx::query_scalar("SELECT pifleet_telemetry_prepare($1, $2)")
        .bind(now)
        .bind(days_ahead)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn drop_before(pool: &PgPool, cutoff: i64) -> i64 {
    sqlx::query_scalar("SELECT pifleet_telemetry_drop_before($1)")
        .bind(cutoff)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn daily_partitions_take_samples_and_retention_drops_them() {
    let pool = migrated(shared().await.unwrap()).await;
    // Yesterday through two days ahead.
    assert_eq!(prepare(&pool, NOW, 2).await, 4);
    assert_eq!(insert(&pool, 1, TODAY - DAY + 1_000, NOW).await, 1);
    assert_eq!(insert(&pool, 2, NOW, NOW).await, 1);
    assert_eq!(insert(&pool, 3, NOW + 400 * DAY, TODAY - 10 * DAY).await, 1);
    assert_eq!(insert(&pool, 4, NOW + 5 * DAY, NOW).await, 1);
    assert_eq!(insert(&pool, 5, NOW + 300 * DAY, NOW + 10 * DAY).await, 1);
    assert_eq!(partition_of(&pool, 1).await, "telemetry_p20261205");
    assert_eq!(partition_of(&pool, 2).await, "telemetry_p20261206");
    for seq in [3, 4, 5] {
        assert_eq!(partition_of(&pool, seq).await, "telemetry_default");
    }
    // A re-sent sample is skipped, wherever it lives.
    assert_eq!(insert(&pool, 2, NOW, NOW + 5).await, 0);
    assert_eq!(insert(&pool, 4, NOW + 5 * DAY, NOW + 5).await, 0);

    // Days 3..=6 ahead; day 5's sample moves out of the default partition.
    assert_eq!(prepare(&pool, NOW, 6).await, 4);
    assert_eq!(partition_of(&pool, 4).await, "telemetry_p20261211");
    assert_eq!(insert(&pool, 4, NOW + 5 * DAY, NOW + 5).await, 0);
    assert_eq!(prepare(&pool, NOW, 6).await, 0);
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 5);

    // Yesterday's partition (one sample) and the default partition's old arrival go.
    assert_eq!(drop_before(&pool, TODAY).await, 2);
    let yesterday: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('telemetry_p20261205')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(yesterday, None);
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM telemetry ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, [2, 4, 5]);
    assert_eq!(drop_before(&pool, TODAY).await, 0);
    // A day is dropped only once all of it is older than the cutoff.
    assert_eq!(drop_before(&pool, TODAY + DAY - 1).await, 0);
    assert_eq!(drop_before(&pool, TODAY + DAY).await, 1);
}

#[tokio::test]
async fn concurrent_prepares_take_turns() {
    let pool = migrated(shared().await.unwrap()).await;
    let now = NOW + 50 * DAY;
    let mut first = pool.begin().await.unwrap();
    let created: i32 = sqlx::query_scalar("SELECT pifleet_telemetry_prepare($1, 3)")
        .bind(now)
        .fetch_one(&mut *first)
        .await
        .unwrap();
    assert_eq!(created, 5);
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { prepare(&pool, now, 3).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second prepare waits for the first"
    );
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), 0);

    // Side by side from scratch: every day made once, neither call fails.
    let later = NOW + 80 * DAY;
    let (a, b) = tokio::join!(prepare(&pool, later, 4), prepare(&pool, later, 4));
    assert_eq!((a + b, a.min(b)), (6, 0));
}

/// A sample committed into the default partition while a prepare runs for its day (here:
/// inserted before, committed after the prepare started) moves into the new day instead of
/// failing the prepare. Its day is the first one the prepare makes: a later day would be
/// safe anyway, behind the locks of the earlier days' DDL.
#[tokio::test]
async fn prepare_waits_for_samples_on_their_way_in() {
    let pool = migrated(shared().await.unwrap()).await;
    let start = NOW + 120 * DAY;
    let mut ingest = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO telemetry (device_id, seq, ts, received_at, cpu_pct, load1, load5, load15, \
         mem_total, mem_used, swap_total, swap_used, uptime_s, spool_dropped, spool_backlog, \
         disks, nets) VALUES ('d1', 1, $1, $2, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, '[]', '[]')",
    )
    .bind(start - DAY)
    .bind(NOW)
    .execute(&mut *ingest)
    .await
    .unwrap();
    let prepared = tokio::spawn({
        let pool = pool.clone();
        async move { prepare(&pool, start, 3).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!prepared.is_finished(), "the prepare waits for the ingest");
    ingest.commit().await.unwrap();
    assert_eq!(prepared.await.unwrap(), 5);
    assert_eq!(partition_of(&pool, 1).await, "telemetry_p20270404");
}

#[tokio::test]
async fn a_killed_or_stopped_server_starts_again_with_its_data() {
    let cluster = PgCluster::start().await.unwrap();
    let url = cluster.fresh_database().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (v BIGINT); INSERT INTO kept VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let kept = || async {
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        sqlx::query_scalar::<_, i64>("SELECT v FROM kept")
            .fetch_one(&mut conn)
            .await
    };

    cluster.kill().await.unwrap();
    assert!(kept().await.is_err(), "the server answers after SIGKILL");
    cluster.start_again().await.unwrap();
    assert_eq!(kept().await.unwrap(), 42);

    cluster.stop().await.unwrap();
    assert!(!running(&cluster.data()));
    assert!(kept().await.is_err(), "the server answers after stop");
    cluster.start_again().await.unwrap();
    assert_eq!(kept().await.unwrap(), 42);
    assert!(cluster.create_database("No-such").await.is_err());
}

#[tokio::test]
async fn drop_leaves_no_process_and_no_files() {
    let cluster = PgCluster::start().await.unwrap();
    let dir = cluster.dir.clone();
    assert!(running(&cluster.data()), "the postmaster runs");
    let url = cluster.url("postgres");
    assert!(url.contains(cluster.password()) && url.contains(&cluster.port().to_string()));
    drop(cluster);
    assert!(!running(&dir), "a process of the cluster is left");
    assert!(!dir.exists());
}

/// The cluster goes with the test process, whether it exits (the shared cluster is never
/// dropped) or is killed: another run of this test binary holds the shared cluster.
#[tokio::test]
async fn the_shared_cluster_goes_with_the_test_process() {
    for mode in ["exit", "kill"] {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::pg_cluster::tests::child_holding_the_shared_cluster",
                "--ignored",
                "--nocapture",
            ])
            .env("PIFLEET_PG_CHILD", mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let data = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(data) = line.strip_prefix("PIFLEET_PG_DATA=") {
                    return PathBuf::from(data);
                }
            }
            panic!("the child ended without a cluster");
        })
        .await
        .unwrap();
        let dir = data.parent().unwrap().to_owned();
        if mode == "kill" {
            assert!(running(&data), "the child's postmaster runs");
            child.kill().await.unwrap();
        } else {
            assert!(child.wait().await.unwrap().success());
        }
        assert!(
            gone_within(&dir, Duration::from_secs(30)).await,
            "{mode}: the cluster in {} outlived its process",
            dir.display()
        );
    }
}

/// Not a test by itself: the process the test above ends (does nothing unless it set
/// PIFLEET_PG_CHILD).
#[tokio::test]
#[ignore = "run by the_shared_cluster_goes_with_the_test_process"]
async fn child_holding_the_shared_cluster() {
    let Ok(mode) = std::env::var("PIFLEET_PG_CHILD") else {
        return;
    };
    let cluster = shared().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&cluster.fresh_database().await.unwrap())
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
    println!("PIFLEET_PG_DATA={}", cluster.data().display());
    if mode == "kill" {
        tokio::time::sleep(Duration::from_secs(300)).await;
    }
}

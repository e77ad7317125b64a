use super::*;
use crate::audit::Event;
use crate::store::PgOptions;
use crate::store::testkit::{add_device, sample, sqlite_store, telemetry};

/// SQLite's tables, but the migrations'.
async fn sqlite_tables(s: &Store) -> Vec<String> {
    reading!(s, |ex| sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name"
    )
    .fetch_all(ex)
    .await)
    .unwrap()
}

/// A table added to the schema without being added to the copy fails here.
#[tokio::test]
async fn the_copy_names_every_table_of_the_schema() {
    let (_dir, s) = sqlite_store().await;
    let mut listed: Vec<String> = TABLES
        .iter()
        .chain(NOT_COPIED)
        .map(|t| (*t).to_owned())
        .collect();
    listed.sort();
    let before = listed.len();
    listed.dedup();
    assert_eq!(listed.len(), before, "a table listed twice");
    assert_eq!(sqlite_tables(&s).await, listed);
}

async fn pg_store() -> Store {
    let cluster = crate::store::pg_cluster::shared().await.unwrap();
    let url = cluster.fresh_database().await.unwrap();
    Store::open_postgres(&url, &PgOptions::default())
        .await
        .unwrap()
}

async fn count(s: &Store, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    reading!(s, |ex| sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(ex)
        .await)
    .unwrap()
}

/// Ids, booleans, JSON text and samples arrive as they were; the sequences continue after
/// the copied ids; the audit chain still verifies and grows; a second copy is refused and
/// changes nothing; the PostgreSQL schema has every table the copy names.
#[tokio::test]
async fn a_fleet_is_copied_whole_and_only_once() {
    let (_dir, src) = sqlite_store().await;
    add_device(&src, "pi-a", r#"{"site":"lab"}"#, Some("a"), true).await;
    add_device(&src, "pi-b", "{}", None, false).await;
    // Two days of samples, the first far enough back to need its own partition.
    let old = now_ms() - 3 * DAY_MS;
    let samples: Vec<_> = (1..=2500)
        .map(|i| sample(i, old + i64::try_from(i).unwrap() * 100, 1.0, 500))
        .collect();
    telemetry(&src, "pi-a", samples).await;
    telemetry(&src, "pi-b", vec![sample(1, now_ms(), 2.0, 600)]).await;
    for i in 0..3 {
        src.append_audit(&Event::cli("test.step", &format!("t{i}"), "ok", ""))
            .await
            .unwrap();
    }
    let dst = pg_store().await;
    // PostgreSQL's tables are the same (its day partitions aside).
    let mut pg: Vec<String> = reading!(dst, |ex| sqlx::query_scalar(
        "SELECT CAST(c.relname AS TEXT) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    .fetch_all(ex)
    .await)
    .unwrap();
    pg.sort();
    assert_eq!(pg, sqlite_tables(&src).await);
    let report = src.copy_to(&dst).await.unwrap();
    assert_eq!(report.telemetry_in_default, 0);
    assert_eq!(report.rows.len(), TABLES.len());
    for (table, n) in &report.rows {
        let (a, b) = (count(&src, table).await, count(&dst, table).await);
        assert_eq!((a, b), (i64::try_from(*n).unwrap(), a), "{table}");
    }
    let a: (String, bool) = reading!(dst, |ex| sqlx::query_as(
        "SELECT labels, online FROM devices WHERE id = 'pi-a'"
    )
    .fetch_one(ex)
    .await)
    .unwrap();
    assert_eq!(a, (r#"{"site":"lab"}"#.to_owned(), true));
    assert_eq!(src.verify_audit().await.unwrap().result, Ok(3));
    assert_eq!(
        dst.verify_audit().await.unwrap(),
        src.verify_audit().await.unwrap()
    );
    let next = dst
        .append_audit(&Event::cli("store.copy", "x", "ok", ""))
        .await
        .unwrap();
    assert_eq!(next, 4);
    assert_eq!(dst.verify_audit().await.unwrap().result, Ok(4));

    let audit_rows = count(&dst, "audit_log").await;
    let e = src.copy_to(&dst).await.unwrap_err();
    assert!(
        matches!(e, CopyError::TargetHoldsFleet { devices: 2, .. }),
        "{e}"
    );
    assert_eq!(count(&dst, "audit_log").await, audit_rows);
    assert_eq!(count(&dst, "telemetry").await, 2501);
    // The wrong way round is refused too.
    assert!(matches!(
        dst.copy_to(&src).await.unwrap_err(),
        CopyError::WrongDatabases
    ));
}

/// A copy that fails half way (here a row the target already has) leaves the target as it
/// was: nothing of the tables copied before the failure stays.
#[tokio::test]
async fn a_failed_copy_leaves_nothing_behind() {
    let (_dir, src) = sqlite_store().await;
    add_device(&src, "pi-a", "{}", None, true).await;
    telemetry(&src, "pi-a", vec![sample(1, now_ms(), 1.0, 500)]).await;
    let dst = pg_store().await;
    for s in [&src, &dst] {
        writing!(s, |ex| sqlx::query(
            "INSERT INTO release_numbers (app, last) VALUES ('web', 1)"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    let e = src.copy_to(&dst).await.unwrap_err();
    assert!(
        matches!(
            e,
            CopyError::Table {
                table: "release_numbers",
                ..
            }
        ),
        "{e}"
    );
    for table in TABLES {
        let expected = i64::from(*table == "release_numbers");
        assert_eq!(count(&dst, table).await, expected, "{table}");
    }
}

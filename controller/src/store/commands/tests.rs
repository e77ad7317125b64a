//! The paged command list, its query plan, and how stored output reads.

use pifleet_shared::command::{Action, CommandId};
use sqlx::QueryBuilder;

use super::{LISTING_COLUMNS, push_command_filter};
use crate::model::commands::Status;
use crate::store::NewCommand;
use crate::store::testkit::{add_device, plan, sqlite_store, store};

#[tokio::test]
async fn command_pages() {
    let (_d, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    add_device(&s, "pi-b", "{}", None, true).await;
    for (i, dev) in ["pi-a", "pi-b", "pi-a"].iter().enumerate() {
        let cmd = NewCommand {
            id: CommandId([u8::try_from(i).unwrap(); 16]),
            device: (*dev).into(),
            action: if i == 2 { Action::Reboot } else { Action::Ping },
            expires_at: i64::MAX,
            answer_timeout_ms: 1_000,
        };
        s.insert_commands(&[cmd]).await.unwrap();
        // Distinct creation times, oldest first.
        writing!(s, |ex| sqlx::query(
            "UPDATE commands SET created_at = $1 WHERE id = $2"
        )
        .bind(i64::try_from(i).unwrap())
        .bind(CommandId([u8::try_from(i).unwrap(); 16]).to_string())
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    let id = |i: u8| CommandId([i; 16]).to_string();
    let (total, rows) = s.command_page(None, None, None, 50, 0).await.unwrap();
    assert_eq!(total, 3);
    let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, [id(2), id(1), id(0)]);
    assert!(
        rows.iter()
            .all(|r| r.stdout.is_none() && r.stderr.is_none())
    );
    assert_eq!(rows[0].parsed_action().unwrap(), Action::Reboot);
    let (total, rows) = s
        .command_page(None, None, Some("ping"), 50, 0)
        .await
        .unwrap();
    let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!((total, got), (2, vec![id(1).as_str(), id(0).as_str()]));
    let (total, rows) = s
        .command_page(Some("pi-a"), None, None, 1, 1)
        .await
        .unwrap();
    assert_eq!((total, rows.len(), rows[0].id.clone()), (2, 1, id(0)));
    assert_eq!(
        s.cancel_command(&id(1)).await.unwrap(),
        crate::store::Cancel::Cancelled
    );
    assert_eq!(
        s.cancel_command(&id(1)).await.unwrap(),
        crate::store::Cancel::Refused(Status::Cancelled)
    );
    let (total, rows) = s
        .command_page(None, Some(Status::Cancelled), None, 50, 0)
        .await
        .unwrap();
    assert_eq!((total, rows[0].id.clone()), (1, id(1)));
    let (total, rows) = s
        .command_page(Some("pi-b"), Some(Status::Queued), None, 50, 0)
        .await
        .unwrap();
    assert_eq!((total, rows.len()), (0, 0));
}

/// Command pages read through an index, newest first, without sorting.
#[tokio::test]
async fn the_command_page_plan_uses_an_index() {
    let (_d, s) = sqlite_store().await;
    let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new("EXPLAIN QUERY PLAN SELECT ");
    qb.push(LISTING_COLUMNS).push(" FROM commands");
    push_command_filter(&mut qb, None, None, None);
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0");
    let p = plan(&s, qb).await;
    assert!(p.iter().any(|l| l.contains("commands_created")), "{p:?}");
    assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
}

/// Output is stored as bytes (the agent may cut it inside a character) and read as text
/// with invalid UTF-8 replaced; a missing output stays `None`.
#[tokio::test]
async fn output_reads_as_lossy_text() {
    let (_d, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    let id = CommandId([7; 16]);
    let cmd = NewCommand {
        id,
        device: "pi-a".into(),
        action: Action::Ping,
        expires_at: i64::MAX,
        answer_timeout_ms: 1_000,
    };
    s.insert_commands(&[cmd]).await.unwrap();
    let row = s.command(&id.to_string()).await.unwrap().unwrap();
    assert_eq!((row.stdout, row.stderr), (None, None));
    writing!(s, |ex| sqlx::query(
        "UPDATE commands SET stdout = $1, stderr = $2 WHERE id = $3"
    )
    .bind(b"ok \xe2\x82".as_slice())
    .bind(b"".as_slice())
    .bind(id.to_string())
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let row = s.command(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(row.stdout.as_deref(), Some("ok \u{fffd}"));
    assert_eq!(row.stderr.as_deref(), Some(""));
}

/// A status this version does not know is a decode error that names it, wherever a status
/// is read.
#[tokio::test]
async fn an_unknown_stored_status_is_a_decode_error() {
    let (_d, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    let id = CommandId([9; 16]);
    let cmd = NewCommand {
        id,
        device: "pi-a".into(),
        action: Action::Ping,
        expires_at: i64::MAX,
        answer_timeout_ms: 1_000,
    };
    s.insert_commands(&[cmd]).await.unwrap();
    writing!(s, |ex| sqlx::query(
        "UPDATE commands SET status = 'paused' WHERE id = $1"
    )
    .bind(id.to_string())
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let e = s.command(&id.to_string()).await.unwrap_err();
    assert!(
        e.to_string().contains(r#"unknown command status "paused""#),
        "{e}"
    );
    assert!(s.command_page(None, None, None, 50, 0).await.is_err());
    assert!(s.list_commands(None, None, 50).await.is_err());
    assert!(s.cancel_command(&id.to_string()).await.is_err());
}

/// `n` pings for `device`, ids 1..=n.
fn pings(device: &str, n: u8) -> Vec<NewCommand> {
    (1..=n)
        .map(|n| NewCommand {
            id: CommandId([n; 16]),
            device: device.into(),
            action: Action::Ping,
            expires_at: i64::MAX,
            answer_timeout_ms: 1_000,
        })
        .collect()
}

/// Controllers sharing a database claim commands from one outbox: each command once, also
/// when they claim at the same moment; a re-send (after the resend time) is claimed once
/// again; what is not due stays.
#[tokio::test]
async fn a_dispatchable_command_is_claimed_once() {
    let (_d, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    s.insert_commands(&pings("pi-a", 40)).await.unwrap();
    // Three controllers at once, 10 each at most, then the rest.
    let (a, b, c) = tokio::join!(
        s.claim_dispatchable(0, 10),
        s.claim_dispatchable(0, 10),
        s.claim_dispatchable(0, 10)
    );
    let mut ids: Vec<String> = [a.unwrap(), b.unwrap(), c.unwrap()]
        .into_iter()
        .flatten()
        .inspect(|c| {
            assert_eq!(c.status, Status::Sent);
            assert!(c.issued_at.is_some() && c.sent_at.is_some());
        })
        .map(|c| c.id)
        .collect();
    assert_eq!(ids.len(), 30);
    let rest = s.claim_dispatchable(0, 100).await.unwrap();
    assert_eq!(rest.len(), 10);
    ids.extend(rest.into_iter().map(|c| c.id));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40, "a command claimed twice or never");
    // Nothing is due until the resend time.
    assert!(s.claim_dispatchable(0, 100).await.unwrap().is_empty());
    // Due for a re-send: claimed once again, oldest first.
    let again = s.claim_dispatchable(i64::MAX, 100).await.unwrap();
    assert_eq!(again.len(), 40);
    assert!(again.windows(2).all(|w| w[0].created_at <= w[1].created_at));
}

/// On PostgreSQL a claim skips the commands another controller's claim holds instead of
/// waiting for it: with one command locked by an open transaction, a claim returns the
/// others at once.
#[tokio::test]
async fn a_claim_skips_what_another_claim_holds() {
    let (_d, s) = store().await;
    let crate::store::db::Db::Postgres { pool } = &s.db else {
        return;
    };
    add_device(&s, "pi-a", "{}", None, true).await;
    s.insert_commands(&pings("pi-a", 3)).await.unwrap();
    let held = CommandId([2; 16]).to_string();
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM commands WHERE id = $1 FOR UPDATE")
        .bind(&held)
        .execute(&mut *other)
        .await
        .unwrap();
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.claim_dispatchable(0, 10),
    )
    .await
    .expect("the claim waited for the held row")
    .unwrap();
    let ids: Vec<&str> = got.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&held.as_str()));
    other.rollback().await.unwrap();
    let last = s.claim_dispatchable(0, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].id, held);
}

//! The paged command list and its query plan.

use pifleet_shared::command::{Action, CommandId};
use sqlx::{QueryBuilder, Sqlite};

use super::{COMMAND_COLUMNS, push_command_filter};
use crate::commands::lifecycle::Status;
use crate::store::NewCommand;
use crate::store::testkit::{add_device, plan, store};

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
        sqlx::query("UPDATE commands SET created_at = ? WHERE id = ?")
            .bind(i64::try_from(i).unwrap())
            .bind(CommandId([u8::try_from(i).unwrap(); 16]).to_string())
            .execute(&s.writer)
            .await
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
    let (_d, s) = store().await;
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("EXPLAIN QUERY PLAN SELECT ");
    qb.push(COMMAND_COLUMNS).push(" FROM commands");
    push_command_filter(&mut qb, None, None, None);
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0");
    let p = plan(&s, qb).await;
    assert!(p.iter().any(|l| l.contains("commands_created")), "{p:?}");
    assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
}

//! Command and audit pages, and the query plans of the listings.

use super::*;

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

#[tokio::test]
async fn audit_pages() {
    let (_d, s) = store().await;
    assert_eq!(s.audit_head().await.unwrap(), None);
    for i in 0..6 {
        let ev = Event {
            actor: if i % 2 == 0 { "user:alice" } else { "cli:root" }.into(),
            source: "local".into(),
            action: if i < 3 {
                "device.revoke"
            } else {
                "token.create"
            }
            .into(),
            target: format!("t{i}"),
            outcome: "ok".into(),
            detail: String::new(),
        };
        s.append_audit(&ev).await.unwrap();
    }
    assert_eq!(s.audit_head().await.unwrap(), Some(6));
    let page = |f: AuditFilter| {
        let s = s.clone();
        async move {
            s.audit_page(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        }
    };
    let all = AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    };
    assert_eq!(page(all.clone()).await, [6, 5, 4, 3, 2, 1]);
    assert_eq!(
        page(AuditFilter {
            limit: 2,
            ..all.clone()
        })
        .await,
        [6, 5]
    );
    assert_eq!(
        page(AuditFilter {
            before: Some(5),
            limit: 2,
            ..all.clone()
        })
        .await,
        [4, 3]
    );
    assert_eq!(
        page(AuditFilter {
            actor: Some("user:alice".into()),
            ..all.clone()
        })
        .await,
        [5, 3, 1]
    );
    assert_eq!(
        page(AuditFilter {
            action: Some("token.create".into()),
            actor: Some("cli:root".into()),
            ..all.clone()
        })
        .await,
        [6, 4]
    );
    assert!(
        page(AuditFilter {
            since: Some(i64::MAX),
            ..all.clone()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        page(AuditFilter {
            until: Some(i64::MAX),
            since: Some(0),
            ..all
        })
        .await
        .len(),
        6
    );
}

async fn plan(s: &Store, mut qb: QueryBuilder<Sqlite>) -> Vec<String> {
    qb.build()
        .fetch_all(&s.reader)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect()
}

/// Command and audit pages read through indexes, newest first, without sorting.
#[tokio::test]
async fn listing_plans_use_indexes() {
    let (_d, s) = store().await;
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("EXPLAIN QUERY PLAN SELECT ");
    qb.push(COMMAND_COLUMNS).push(" FROM commands");
    push_command_filter(&mut qb, None, None, None);
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0");
    let p = plan(&s, qb).await;
    assert!(p.iter().any(|l| l.contains("commands_created")), "{p:?}");
    assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
    let qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "EXPLAIN QUERY PLAN SELECT seq FROM audit_log WHERE 1 = 1 AND seq < 10 \
         ORDER BY seq DESC LIMIT 10",
    );
    let p = plan(&s, qb).await;
    assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
}

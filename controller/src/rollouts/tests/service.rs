//! The service against a real database: creation and its plan, the runner's decisions from
//! command receipts, operator actions, approval. Receipts are written as the dispatcher
//! writes them; time is passed in, so deadlines need no waiting.

use crate::store::db::{reading, writing};
use std::time::Duration;

use super::super::service::{self, Action, Actor, RolloutRequest};
use super::super::spec::RolloutSettings;
use super::super::step::step;
use crate::approvals::Policy;
use crate::commands::dispatch::Targets;
use crate::model::role::Role;
use crate::store::testkit::{add_device, store};
use crate::store::{Store, now_ms};

const APPS_ON_1: &str =
    r#"[{"app":"web","unit":"web.service","current":1,"current_dir":"1-11111111","kept":[1]}]"#;

fn lax() -> Policy {
    Policy {
        device_threshold: 1000,
        whole_fleet: false,
        expiry: Duration::from_secs(60),
    }
}

/// Releases 1 and 2 of `web`; devices pi-000… on release 1 (aarch64), and one that does
/// not allowlist the app.
async fn fleet(n: usize) -> (crate::store::testkit::Guard, Store, i64) {
    let (dir, s) = store().await;
    for release in [1_i64, 2] {
        writing!(s, |ex| sqlx::query(
            "INSERT INTO releases (app, release, version, archive_sha256, archive_size, \
             unpacked_size, entries, arches, health, hooks, key_id, manifest_sha256, \
             source_kind, created_at, created_by) VALUES ('web', $1, 'v', $2, 10, 10, 1, '[]', \
             '{\"start_timeout_s\":1,\"soak_s\":1,\"probe\":null,\"probe_passes\":1,\"probe_interval_s\":1}', \
             '[]', '0000000000000000', $3, 'upload', 1, 'test')",
        )
        .bind(release)
        .bind(format!("{release}").repeat(64))
        .bind(format!("{}", release + 4).repeat(64))
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    for i in 0..n {
        let id = format!("pi-{i:03}");
        add_device(&s, &id, r#"{"site":"a"}"#, None, true).await;
        writing!(s, |ex| sqlx::query(
            "UPDATE devices SET arch = 'aarch64', apps = $1 WHERE id = $2"
        )
        .bind(APPS_ON_1)
        .bind(&id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    add_device(&s, "pi-other", r#"{"site":"a"}"#, None, true).await;
    writing!(s, |ex| sqlx::query(
        "UPDATE devices SET arch = 'aarch64', apps = '[]' WHERE id = 'pi-other'"
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    (dir, s, 2)
}

fn ops() -> Actor<'static> {
    Actor {
        name: "user:ops",
        user_id: Some(1),
    }
}

async fn create(s: &Store, release: i64, change: impl FnOnce(&mut RolloutSettings)) -> i64 {
    let mut settings = RolloutSettings::default();
    change(&mut settings);
    let req = RolloutRequest {
        release_id: release,
        targets: Targets::Selector([("site".to_owned(), "a".to_owned())].into()),
        settings,
    };
    let c = service::create(s, &lax(), req, ops(), false).await.unwrap();
    c.rollout.unwrap().id
}

/// (device, state) of every rollout device, in order.
async fn states(s: &Store, id: i64) -> Vec<(String, String)> {
    s.rollout_devices(id, false)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.device_id, d.state))
        .collect()
}

async fn state_of(s: &Store, id: i64, device: &str) -> String {
    states(s, id)
        .await
        .into_iter()
        .find(|(d, _)| d == device)
        .unwrap()
        .1
}

/// The device's latest command: (id, kind, status).
async fn command_of(s: &Store, device: &str) -> Option<(String, String, String)> {
    reading!(s, |ex| sqlx::query_as(
        "SELECT id, action_kind, status FROM commands WHERE device_id = $1 \
         ORDER BY created_at DESC, rowid DESC LIMIT 1",
    )
    .bind(device)
    .fetch_optional(ex)
    .await)
    .unwrap()
}

/// Writes a final receipt as the dispatcher would.
async fn answer(s: &Store, device: &str, status: &str, reason: Option<&str>, journal: &str) {
    let (id, _, _) = command_of(s, device).await.unwrap();
    writing!(s, |ex| sqlx::query(
        "UPDATE commands SET status = $1, reason = $2, stderr = $3, finished_at = $4 WHERE id = $5",
    )
    .bind(status)
    .bind(reason)
    .bind(journal.as_bytes())
    .bind(now_ms())
    .bind(id)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

/// Runs the runner's decision until nothing changes.
async fn settle(s: &Store, id: i64, now: i64) {
    for _ in 0..10 {
        let before = s.rollout_version(id).await.unwrap();
        let stepped = step(s, id, now).await.unwrap();
        let changed = s.rollout_version(id).await.unwrap() != before;
        assert_eq!(stepped.written, changed, "step says what it wrote");
        if !changed {
            return;
        }
    }
    panic!("rollout {id} does not settle");
}

#[tokio::test]
async fn a_failed_canary_pauses_the_rollout_and_leaves_the_rest_untouched() {
    let (_d, s, two) = fleet(10).await;
    let id = create(&s, two, |r| {
        r.canary = 1;
        r.batch_percents = vec![50, 100];
    })
    .await;
    let now = now_ms();
    settle(&s, id, now).await;
    let st = states(&s, id).await;
    assert_eq!(st[0], ("pi-000".into(), "queued".into()));
    assert!(st[1..10].iter().all(|(_, s)| s == "pending"), "{st:?}");
    assert_eq!(st[10], ("pi-other".into(), "incompatible".into()));
    let (_, kind, status) = command_of(&s, "pi-000").await.unwrap();
    assert_eq!((kind.as_str(), status.as_str()), ("deploy", "queued"));

    answer(
        &s,
        "pi-000",
        "failed",
        Some("rolled_back: release 2 of web failed: web.service did not become active; 1-11111111 is live again"),
        "web[1]: panic: boom",
    )
    .await;
    settle(&s, id, now + 1000).await;
    let row = s.rollout(id).await.unwrap().unwrap();
    assert_eq!(row.status, "paused");
    assert_eq!(row.pause_cause.as_deref(), Some("batch_failed"));
    assert_eq!(
        row.reason.as_deref(),
        Some("batch 1 (canary) failed: 1 of 1 devices rolled back; threshold 100 %")
    );
    let d = &s.rollout_devices(id, false).await.unwrap()[0];
    assert_eq!(d.state, "rolled_back");
    assert!(
        d.reason
            .as_deref()
            .unwrap()
            .contains("did not become active")
    );
    assert_eq!(d.journal.as_deref(), Some("web[1]: panic: boom"));
    for i in 1..10 {
        let dev = format!("pi-{i:03}");
        assert_eq!(state_of(&s, id, &dev).await, "pending");
        assert_eq!(command_of(&s, &dev).await, None, "{dev} was sent nothing");
    }
    // Nothing moves while paused, however long.
    settle(&s, id, now + 86_400_000).await;
    assert_eq!(command_of(&s, "pi-001").await, None);
}

#[tokio::test]
async fn batches_follow_the_canary_and_an_abort_reverts_the_updated_devices() {
    let (_d, s, two) = fleet(10).await;
    let id = create(&s, two, |r| {
        r.canary = 1;
        r.batch_percents = vec![50, 100];
    })
    .await;
    let now = now_ms();
    settle(&s, id, now).await;
    answer(&s, "pi-000", "succeeded", None, "").await;
    settle(&s, id, now).await;
    let st = states(&s, id).await;
    let queued: Vec<&str> = st
        .iter()
        .filter(|(_, s)| s == "queued")
        .map(|(d, _)| d.as_str())
        .collect();
    assert_eq!(queued, ["pi-001", "pi-002", "pi-003", "pi-004"]);
    answer(&s, "pi-001", "succeeded", None, "").await;

    let row = service::act(&s, id, Action::Abort { revert: true }, "user:ops")
        .await
        .unwrap();
    assert_eq!(row.status, "aborted");
    assert_eq!(state_of(&s, id, "pi-000").await, "reverting");
    // pi-001 answered, but the abort decided on what was folded in: it is still queued
    // there, so it is untouched, and its (finished) command is not cancelled.
    for dev in ["pi-002", "pi-003", "pi-004"] {
        assert_eq!(state_of(&s, id, dev).await, "untouched", "{dev}");
        let (_, _, status) = command_of(&s, dev).await.unwrap();
        assert_eq!(status, "cancelled", "{dev}: its deploy was withdrawn");
    }
    let (_, kind, _) = command_of(&s, "pi-000").await.unwrap();
    assert_eq!(kind, "rollback");
    // The late success of pi-001 is folded in and it is reverted too.
    settle(&s, id, now).await;
    assert_eq!(state_of(&s, id, "pi-001").await, "reverting");
    for dev in ["pi-000", "pi-001"] {
        answer(&s, dev, "succeeded", None, "").await;
    }
    settle(&s, id, now).await;
    assert_eq!(state_of(&s, id, "pi-000").await, "reverted");
    assert_eq!(state_of(&s, id, "pi-001").await, "reverted");
    assert_eq!(state_of(&s, id, "pi-009").await, "untouched");
    let events = s.rollout_events(id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.actor == "user:ops" && e.text.contains("aborted by an operator with revert")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_device_that_never_answers_is_unreachable_and_the_rollout_completes() {
    let (_d, s, two) = fleet(2).await;
    let id = create(&s, two, |r| {
        r.canary = 0;
        r.batch_percents = vec![100];
        r.delivery_deadline_secs = 5;
    })
    .await;
    let now = now_ms();
    settle(&s, id, now).await;
    answer(&s, "pi-000", "succeeded", None, "").await;
    settle(&s, id, now + 1000).await;
    assert_eq!(s.rollout(id).await.unwrap().unwrap().status, "running");
    // The runner is told to look again at the deadline.
    let next = step(&s, id, now + 1000).await.unwrap().next.unwrap();
    assert!(next > now && next <= now + 5_000, "{next}");
    settle(&s, id, now + 6_000).await;
    let row = s.rollout(id).await.unwrap().unwrap();
    assert_eq!(row.status, "completed");
    assert_eq!(
        row.reason.as_deref(),
        Some("completed: 1 healthy, 1 unreachable, 1 incompatible")
    );
    let (_, _, status) = command_of(&s, "pi-001").await.unwrap();
    assert_eq!(
        status, "cancelled",
        "the deploy that never went out is withdrawn"
    );
    // A finished rollout lets its release go; a running one would not.
    let mut tx = s.release_tx().await.unwrap();
    assert!(!tx.rollout_uses(two).await.unwrap());
}

#[tokio::test]
async fn a_running_rollout_keeps_its_release() {
    let (_d, s, two) = fleet(2).await;
    let id = create(&s, two, |_| {}).await;
    let mut tx = s.release_tx().await.unwrap();
    assert!(tx.rollout_uses(two).await.unwrap());
    drop(tx);
    service::act(&s, id, Action::Abort { revert: false }, "user:ops")
        .await
        .unwrap();
    let mut tx = s.release_tx().await.unwrap();
    assert!(!tx.rollout_uses(two).await.unwrap());
}

#[tokio::test]
async fn no_compatible_device_is_refused_and_a_preview_stores_nothing() {
    let (_d, s, two) = fleet(1).await;
    let req = |targets| RolloutRequest {
        release_id: two,
        targets,
        settings: RolloutSettings::default(),
    };
    let e = service::create(
        &s,
        &lax(),
        req(Targets::Devices(vec!["pi-other".into()])),
        ops(),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("pi-other: its agent.toml does not allowlist the app ([apps.web])"),
        "{e}"
    );
    let preview = service::create(
        &s,
        &lax(),
        req(Targets::Selector(
            [("site".to_owned(), "a".to_owned())].into(),
        )),
        ops(),
        true,
    )
    .await
    .unwrap();
    assert!(preview.rollout.is_none());
    assert_eq!(preview.plan.compatible_count(), 1);
    assert!(s.list_rollouts(None, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_large_rollout_waits_for_a_second_admin() {
    let (_d, s, two) = fleet(3).await;
    let strict = Policy {
        device_threshold: 2,
        ..lax()
    };
    let req = || RolloutRequest {
        release_id: two,
        targets: Targets::Selector([("site".to_owned(), "a".to_owned())].into()),
        settings: RolloutSettings::default(),
    };
    // One admin: nobody could approve.
    s.create_user("ops", Role::Admin, "x", false)
        .await
        .unwrap()
        .unwrap();
    let e = service::create(&s, &strict, req(), ops(), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("approvals.device_threshold"), "{e}");
    assert!(s.list_rollouts(None, None, 10).await.unwrap().is_empty());

    let second = s
        .create_user("second", Role::Admin, "x", false)
        .await
        .unwrap()
        .unwrap();
    let c = service::create(&s, &strict, req(), ops(), false)
        .await
        .unwrap();
    let rollout = c.rollout.unwrap();
    assert_eq!(rollout.status, "awaiting_approval");
    let approval = c.approval.unwrap().id;
    settle(&s, rollout.id, now_ms()).await;
    assert_eq!(
        command_of(&s, "pi-000").await,
        None,
        "nothing is sent before approval"
    );

    let own = service::approve(&s, &approval, ops()).await.unwrap_err();
    assert!(own.to_string().contains("cannot approve"), "{own}");
    let same_shell = Actor {
        name: "user:ops",
        user_id: None,
    };
    assert!(service::approve(&s, &approval, same_shell).await.is_err());

    let row = service::approve(
        &s,
        &approval,
        Actor {
            name: "user:second",
            user_id: Some(second),
        },
    )
    .await
    .unwrap();
    assert_eq!(row.status, "running");
    let a = s.approval(&approval).await.unwrap().unwrap();
    assert_eq!(a.decided_by.as_deref(), Some("user:second"));
    assert!(
        a.targets.unwrap().contains("pi-002"),
        "the device set is bound"
    );
    settle(&s, rollout.id, now_ms()).await;
    assert!(
        command_of(&s, "pi-000").await.is_some(),
        "the canary goes out"
    );
}

#[tokio::test]
async fn a_guard_window_rollback_counts_as_a_failure_of_the_rollout() {
    use crate::store::IngestOp;
    use pifleet_shared::DeviceId;
    use pifleet_shared::proto::v1::GuardRollback;
    let (_d, s, two) = fleet(3).await;
    let id = create(&s, two, |r| {
        r.canary = 1;
        r.batch_percents = vec![100];
        r.abort_min_results = 1;
        r.abort_failure_pct = 30;
    })
    .await;
    let now = now_ms();
    settle(&s, id, now).await;
    answer(&s, "pi-000", "succeeded", None, "").await;
    settle(&s, id, now).await;
    assert_eq!(state_of(&s, id, "pi-001").await, "queued");
    // The canary committed release 2, then crash-looped within its guard window.
    let rollback = IngestOp::GuardRollback {
        device: DeviceId::parse("pi-000").unwrap(),
        rollback: GuardRollback {
            app: "web".into(),
            release: 2,
            reason: "web.service restarted 3 times within 300 s".into(),
            journal: "web[9]: segfault".into(),
            restored: Some(1),
        },
    };
    s.write_batch(&[rollback]).await.unwrap();
    let d = &s.rollout_devices(id, false).await.unwrap()[0];
    assert_eq!(d.state, "rolled_back");
    assert!(
        d.reason.as_deref().unwrap().contains("guard window"),
        "{d:?}"
    );
    assert_eq!(d.journal.as_deref(), Some("web[9]: segfault"));
    settle(&s, id, now).await;
    let row = s.rollout(id).await.unwrap().unwrap();
    assert_eq!(row.status, "paused");
    assert_eq!(row.pause_cause.as_deref(), Some("abort_rule"));
    // A rollback of a release the rollout does not deploy changes nothing.
    let other = IngestOp::GuardRollback {
        device: DeviceId::parse("pi-001").unwrap(),
        rollback: GuardRollback {
            app: "web".into(),
            release: 1,
            reason: "x".into(),
            journal: String::new(),
            restored: None,
        },
    };
    s.write_batch(&[other]).await.unwrap();
    assert_eq!(state_of(&s, id, "pi-001").await, "queued");
}

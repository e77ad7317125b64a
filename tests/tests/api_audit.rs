//! The audit trail of sign-in events, end to end: logins, lockouts, MFA, logout and refresh
//! reuse are recorded, and tampering with the hash chain (edits, deletions, insertions) is
//! found at the right entry by the API and the command line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::apikit::audit;
use pifleet_tests::authkit::{enrol_mfa, refresh, start, unauthorized};
use pifleet_tests::harness::Controller;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

/// One statement with one integer parameter.
async fn exec(db: &SqlitePool, sql: &'static str, n: i64) {
    sqlx::query(sql).bind(n).execute(db).await.unwrap();
}

async fn verify(api: &Api, admin: &str) -> Value {
    let r = api.get("/api/v1/audit/verify", Some(admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// `audit verify` on the command line: (success, stdout + stderr).
fn cli_verify(ctl: &Controller) -> (bool, String) {
    let out = ctl.cli(&["audit", "verify"]).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn assert_broken_at(ctl: &Controller, api: &Api, admin: &str, seq: i64, what: &str) {
    let v = verify(api, admin).await;
    assert_eq!(v["intact"], false, "{what}: {v}");
    assert_eq!(v["broken_at"], seq, "{what}: {v}");
    let (ok, text) = cli_verify(ctl);
    assert!(!ok, "{what}: {text}");
    assert!(text.contains(&format!("entry {seq} ")), "{what}: {text}");
}

async fn assert_intact(ctl: &Controller, api: &Api, admin: &str, what: &str) {
    let v = verify(api, admin).await;
    assert_eq!(v["intact"], true, "{what}: {v}");
    let (ok, text) = cli_verify(ctl);
    assert!(ok, "{what}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_events_are_audited_and_tampering_is_found() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();
    let (_, olga_refresh) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let (olga2, _) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    unauthorized(&api.login("olga", "wrong-password").await.unwrap(), "wrong");
    for _ in 0..5 {
        unauthorized(&api.login("ghost", "guess").await.unwrap(), "unknown");
    }
    enrol_mfa(&api, &olga).await;
    let r = api
        .post("/api/v1/auth/logout", Some(&olga2), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(refresh(&api, &olga_refresh).await.status, 200);
    unauthorized(&refresh(&api, &olga_refresh).await, "reuse");

    let has = |events: &[Value], actor: &str, target: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e["actor"] == actor && e["target"] == target && e["outcome"] == outcome)
    };
    let logins = audit(&api, &admin, Some("auth.login"), &[]).await;
    for (actor, target, outcome) in [
        ("user:admin", "admin", "ok"),
        ("user:olga", "olga", "ok"),
        ("anonymous", "olga", "failed: wrong password"),
        ("anonymous", "ghost", "failed: unknown user"),
    ] {
        assert!(
            has(&logins, actor, target, outcome),
            "{actor} {target} {outcome}: {logins:?}"
        );
    }
    assert_eq!(logins.iter().filter(|e| e["target"] == "ghost").count(), 5);
    let lockouts = audit(&api, &admin, Some("auth.lockout"), &[]).await;
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert!(has(&lockouts, "anonymous", "ghost", "locked"));
    let mfa = audit(&api, &admin, Some("auth.mfa_enabled"), &[]).await;
    assert_eq!(mfa.len(), 1, "{mfa:?}");
    assert!(has(&mfa, "user:olga", "olga", "ok"));
    let logouts = audit(&api, &admin, Some("auth.logout"), &[]).await;
    assert_eq!(logouts.len(), 1, "{logouts:?}");
    assert!(has(&logouts, "user:olga", "/api/v1/auth/logout", "ok"));
    let reuse = audit(&api, &admin, Some("auth.refresh_reuse"), &[]).await;
    assert_eq!(reuse.len(), 1, "{reuse:?}");
    assert_eq!(reuse[0]["outcome"], "session revoked");
    assert_eq!(reuse[0]["actor"], "user:olga");

    let v = verify(&api, &admin).await;
    assert_eq!(v["intact"], true, "{v}");
    let r = api
        .get("/api/v1/audit?limit=1", Some(&admin))
        .await
        .unwrap();
    let head = r.json()["head"].as_i64().unwrap();
    assert_eq!(v["entries"], head);
    assert!(head > 12, "{head}");
    assert_intact(&ctl, &api, &admin, "before tampering").await;

    // From here on nothing is appended, so the entries keep their numbers.
    let db = ctl.db_rw().await.unwrap();
    let (edit, del, ins) = (head - 10, head - 6, head - 3);

    let target: String = sqlx::query_scalar("SELECT target FROM audit_log WHERE seq = ?")
        .bind(edit)
        .fetch_one(&db)
        .await
        .unwrap();
    exec(
        &db,
        "UPDATE audit_log SET target = 'someone-else' WHERE seq = ?",
        edit,
    )
    .await;
    assert_broken_at(&ctl, &api, &admin, edit, "edited").await;
    sqlx::query("UPDATE audit_log SET target = ? WHERE seq = ?")
        .bind(&target)
        .bind(edit)
        .execute(&db)
        .await
        .unwrap();
    assert_intact(&ctl, &api, &admin, "edit undone").await;

    let saved = sqlx::query("SELECT * FROM audit_log WHERE seq = ?")
        .bind(del)
        .fetch_one(&db)
        .await
        .unwrap();
    exec(&db, "DELETE FROM audit_log WHERE seq = ?", del).await;
    assert_broken_at(&ctl, &api, &admin, del, "deleted").await;
    let mut restore = sqlx::query("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    for i in 0..2 {
        restore = restore.bind(saved.get::<i64, _>(i));
    }
    for i in 2..10 {
        restore = restore.bind(saved.get::<String, _>(i));
    }
    restore.execute(&db).await.unwrap();
    assert_intact(&ctl, &api, &admin, "deletion undone").await;

    // An inserted entry, renumbering the rest: a crude forgery breaks at itself; one whose
    // hash is computed properly over its predecessor breaks at the displaced original.
    exec(
        &db,
        "UPDATE audit_log SET seq = seq + 100000 WHERE seq >= ?",
        ins,
    )
    .await;
    exec(
        &db,
        "UPDATE audit_log SET seq = seq - 99999 WHERE seq >= ?",
        100_000,
    )
    .await;
    let prev: String = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
        .bind(ins - 1)
        .fetch_one(&db)
        .await
        .unwrap();
    let forged = pifleet_controller::audit::Event {
        actor: "user:intruder".into(),
        source: "127.0.0.1".into(),
        action: "user.create".into(),
        target: "/api/v1/users".into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    let insert = |hash: String| {
        sqlx::query("INSERT INTO audit_log VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(ins)
            .bind(forged.actor.clone())
            .bind(forged.source.clone())
            .bind(forged.action.clone())
            .bind(forged.target.clone())
            .bind(forged.outcome.clone())
            .bind(forged.detail.clone())
            .bind(prev.clone())
            .bind(hash)
    };
    insert("ab".repeat(32)).execute(&db).await.unwrap();
    assert_broken_at(&ctl, &api, &admin, ins, "crude insertion").await;
    exec(&db, "DELETE FROM audit_log WHERE seq = ?", ins).await;
    insert(pifleet_controller::audit::entry_hash(
        &prev, ins, 0, &forged,
    ))
    .execute(&db)
    .await
    .unwrap();
    assert_broken_at(&ctl, &api, &admin, ins + 1, "well-hashed insertion").await;
    exec(&db, "DELETE FROM audit_log WHERE seq = ?", ins).await;
    exec(
        &db,
        "UPDATE audit_log SET seq = seq + 100000 WHERE seq > ?",
        ins,
    )
    .await;
    exec(
        &db,
        "UPDATE audit_log SET seq = seq - 100001 WHERE seq >= ?",
        100_000,
    )
    .await;
    assert_intact(&ctl, &api, &admin, "insertion undone").await;
    db.close().await;

    // The chain goes on being appended to after all that.
    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let v = verify(&api, &admin).await;
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["entries"], head + 1);
}

//! Key rotation with a running controller: `rotate jwt-key` puts a new access-token key in
//! use without a restart, and nobody is signed out — a token signed by the previous key
//! keeps working until it expires, also across a second rotation; the rotation is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::harness::{Controller, wait_for};

fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let json =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_access_token_key_signs_at_once_and_nobody_is_signed_out() {
    let ctl = Controller::start_with("[auth]\nkey_reload_s = 1\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let old = api.admin(&ctl).await.unwrap();
    let mut current = kid(&old);

    for round in 0..2 {
        let out = ctl.cli(&["rotate", "jwt-key"]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The running controller signs with the new key within key_reload_s.
        let fresh = wait_for(Duration::from_secs(20), "a token of the new key", || {
            let api = api.clone();
            let current = current.clone();
            async move {
                let (t, _) = api.tokens("admin", TEST_PASSWORD).await.ok()?;
                (kid(&t) != current).then_some(t)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", ctl.log()));
        current = kid(&fresh);
        let r = api.get("/api/v1/whoami", Some(&fresh)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        // The token signed before the rotation still works: nobody is signed out.
        let r = api.get("/api/v1/whoami", Some(&old)).await.unwrap();
        assert_eq!(r.status, 200, "round {round}: {}", r.text);
    }
    let log = ctl.log();
    assert!(log.contains("access-token keys reloaded"), "{log}");
    let db = ctl.db().await.unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'rotate.jwt_key' AND outcome = 'ok'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    db.close().await;
}

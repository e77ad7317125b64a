//! The audit of every mutating admin API request, end to end: successes, refusals and role
//! denials are recorded in order with actor, target, source and outcome; reads are not;
//! the chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::Api;
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::harness::{Agent, Controller};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_request_is_audited() {
    let ctl = Controller::start().await.unwrap();
    let _agent = Agent::enroll(&ctl, "pi-1", 5).unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let viewer = api.user(&admin, "vera", "viewer").await.unwrap();

    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!({ "ttl_s": 600 }))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let token_id = r.json()["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            Method::PUT,
            "/api/v1/devices/pi-1/labels",
            Some(&admin),
            Some(&json!({ "labels": { "site": "lobby" } })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{token_id}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    // Refused for what it asks: audited with its status.
    let r = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/000000000000",
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    problem(&r, 404, "deleting an unknown token");
    // Refused by role: audited as denied, nothing done.
    let r = api
        .post("/api/v1/tokens", Some(&viewer), &json!({ "ttl_s": 600 }))
        .await
        .unwrap();
    problem(&r, 403, "a viewer creating a token");
    let r = api
        .post("/api/v1/devices/pi-1/revoke", Some(&viewer), &json!({}))
        .await
        .unwrap();
    problem(&r, 403, "a viewer revoking a device");
    // Reads are not audited.
    for path in ["/api/v1/devices", "/api/v1/devices/pi-1", "/api/v1/tokens"] {
        let r = api.get(path, Some(&admin)).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }

    let entries = audit(&api, &admin, None, &[]).await;
    let find = |actor: &str, action: &str, target: &str| -> Value {
        let hits: Vec<&Value> = entries
            .iter()
            .filter(|e| e["actor"] == actor && e["action"] == action && e["target"] == target)
            .collect();
        assert_eq!(hits.len(), 1, "{actor} {action} {target} in {entries:#?}");
        hits[0].clone()
    };
    let labels_target = "/api/v1/devices/pi-1/labels";
    let revoke_target = format!("/api/v1/tokens/{token_id}");
    let expect = [
        ("user:admin", "token.create", "/api/v1/tokens", "ok"),
        ("user:admin", "device.labels", labels_target, "ok"),
        ("user:admin", "token.revoke", revoke_target.as_str(), "ok"),
        (
            "user:admin",
            "token.revoke",
            "/api/v1/tokens/000000000000",
            "refused: 404",
        ),
        ("user:vera", "token.create", "/api/v1/tokens", "denied"),
        (
            "user:vera",
            "device.revoke",
            "/api/v1/devices/pi-1/revoke",
            "denied",
        ),
    ];
    let mut seqs = Vec::new();
    for (actor, action, target, outcome) in expect {
        let e = find(actor, action, target);
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        assert_eq!(e["outcome"], outcome, "{e}");
        seqs.push(e["seq"].as_i64().unwrap());
    }
    // In the order of the requests.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Exactly these token and device actions by the two users, nothing more.
    let mutations = entries
        .iter()
        .filter(|e| {
            (e["actor"] == "user:admin" || e["actor"] == "user:vera")
                && (e["action"].as_str().unwrap().starts_with("token.")
                    || e["action"].as_str().unwrap().starts_with("device."))
        })
        .count();
    assert_eq!(mutations, expect.len(), "{entries:#?}");
    for read in ["device.list", "device.show", "token.list", "audit.list"] {
        assert!(
            entries.iter().all(|e| e["action"] != read),
            "{read} was audited"
        );
    }
    // The labels were changed and the device was not revoked.
    let r = api.get("/api/v1/devices/pi-1", Some(&admin)).await.unwrap();
    assert_eq!(r.json()["labels"], json!({ "site": "lobby" }));
    assert_eq!(r.json()["revoked_at"], Value::Null);

    let r = api.get("/api/v1/audit/verify", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["intact"], true, "{}", r.text);
    assert!(r.json()["entries"].as_u64().unwrap() >= entries.len() as u64);
}

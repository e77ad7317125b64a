//! API tokens for automation, end to end: an admin makes a named token bound to a role
//! (shown once, stored hashed); a pipeline in another process uses it over HTTPS — an
//! operator token sends commands, a viewer token reads but cannot change anything; every
//! mutation is audited as `token:NAME`; a revoked token stops working on its next request;
//! wrong tokens are refused like wrong passwords; a token has no account pages and cannot
//! be the second person of a two-person approval.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::Api;
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::fleetkit::{fleet, get, ok};
use pifleet_tests::harness::Controller;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_works_with_a_role_bound_token_until_it_is_revoked() {
    let ctl = Controller::start_with("[approvals]\ndevice_threshold = 1\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let _pis = fleet(&ctl, &api, &admin).await;
    let _second = api.user(&admin, "alma", "admin").await.unwrap();

    let created = ok(
        api.post(
            "/api/v1/api-tokens",
            Some(&admin),
            &json!({ "name": "ci", "role": "operator", "ttl_s": 3600 }),
        )
        .await
        .unwrap(),
        201,
        "create operator token",
    );
    let ci = created["token"].as_str().unwrap().to_owned();
    assert!(ci.starts_with("pfa1.") && ci.len() == 69, "{ci}");
    let ci_id = created["id"].as_str().unwrap().to_owned();
    let viewer = ok(
        api.post(
            "/api/v1/api-tokens",
            Some(&admin),
            &json!({ "name": "dashboards", "role": "viewer" }),
        )
        .await
        .unwrap(),
        201,
        "create viewer token",
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The name is unique; the list never shows a secret.
    problem(
        &api.post(
            "/api/v1/api-tokens",
            Some(&admin),
            &json!({ "name": "ci", "role": "admin" }),
        )
        .await
        .unwrap(),
        400,
        "duplicate name",
    );
    let listed = get(&api, &admin, "/api/v1/api-tokens").await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&ci[5..]), "{listed}");

    // The operator token sends a command; the audit log names the token.
    let sent = ok(
        api.post(
            "/api/v1/commands",
            Some(&ci),
            &json!({ "devices": ["pi-1"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        202,
        "token sends",
    );
    assert_eq!(sent["commands"].as_array().unwrap().len(), 1, "{sent}");
    let sends = audit(&api, &admin, Some("command.send"), &[]).await;
    assert!(
        sends
            .iter()
            .any(|e| e["actor"] == "token:ci" && e["outcome"] == "ok"),
        "{sends:?}"
    );

    // A token asks for a fleet-wide command like a user, but cannot be the second person.
    let held = ok(
        api.post(
            "/api/v1/commands",
            Some(&ci),
            &json!({ "selector": { "site": "lobby" }, "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        202,
        "held",
    );
    assert_eq!(held["approval"]["requested_by"], "token:ci");
    let admin_token = ok(
        api.post(
            "/api/v1/api-tokens",
            Some(&admin),
            &json!({ "name": "robot-admin", "role": "admin" }),
        )
        .await
        .unwrap(),
        201,
        "admin token",
    )["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = held["approval"]["id"].as_str().unwrap();
    let doc = problem(
        &api.post(
            &format!("/api/v1/approvals/{id}/approve"),
            Some(&admin_token),
            &json!({}),
        )
        .await
        .unwrap(),
        403,
        "a token approves",
    );
    assert!(
        doc["detail"].as_str().unwrap().contains("API token"),
        "{doc}"
    );

    // The viewer token reads, and is refused anything that changes state; no account pages.
    get(&api, &viewer, "/api/v1/devices").await;
    problem(
        &api.post(
            "/api/v1/commands",
            Some(&viewer),
            &json!({ "devices": ["pi-1"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        403,
        "viewer sends",
    );
    problem(
        &api.get("/api/v1/whoami", Some(&viewer)).await.unwrap(),
        403,
        "token account page",
    );

    // Wrong tokens are refused.
    let forged = format!("pfa1.{}", "0".repeat(64));
    problem(
        &api.get("/api/v1/devices", Some(&forged)).await.unwrap(),
        401,
        "unknown token",
    );

    // Revoked: the very next request fails.
    let r = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/api-tokens/{ci_id}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    problem(
        &api.get("/api/v1/devices", Some(&ci)).await.unwrap(),
        401,
        "revoked token",
    );
    let revoked = audit(&api, &admin, Some("api_token.revoke"), &[]).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
}

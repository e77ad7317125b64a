//! User management through the admin API, end to end: demoting, disabling and deleting a
//! user takes effect on their next request, nobody removes themselves, and the last enabled
//! admin stays (against concurrent requests and on the command line).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::apikit::problem;
use pifleet_tests::authkit::{refresh, send_command, start, unauthorized, whoami};
use reqwest::Method;
use serde_json::{Value, json};

async fn patch_user(api: &Api, admin: &str, name: &str, body: Value) -> Resp {
    api.call(
        Method::PATCH,
        &format!("/api/v1/users/{name}"),
        Some(admin),
        Some(&body),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demote_disable_and_delete_take_effect_on_the_next_request() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();
    let (_, olga_refresh) = api.tokens("olga", TEST_PASSWORD).await.unwrap();

    let r = send_command(&api, &olga).await;
    problem(&r, 404, "operator sends to an unknown device");
    let r = patch_user(&api, &admin, "olga", json!({ "role": "viewer" })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["role"], "viewer");
    let doc = problem(&send_command(&api, &olga).await, 403, "demoted to viewer");
    assert!(doc.get("code").is_none(), "{doc}");
    assert_eq!(
        api.get("/api/v1/devices", Some(&olga))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(whoami(&api, &olga).await.json()["role"], "viewer");
    let r = patch_user(&api, &admin, "olga", json!({ "role": "operator" })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    problem(&send_command(&api, &olga).await, 404, "promoted back");

    // Disabled: signed out everywhere, and sign-in looks exactly like a wrong password.
    let r = patch_user(&api, &admin, "olga", json!({ "disabled": true })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["disabled"], true);
    unauthorized(&send_command(&api, &olga).await, "disabled user's token");
    unauthorized(
        &refresh(&api, &olga_refresh).await,
        "disabled user's refresh",
    );
    let disabled = api.login("olga", TEST_PASSWORD).await.unwrap();
    let wrong = api.login("olga", "wrong-password-entirely").await.unwrap();
    unauthorized(&disabled, "disabled user signs in");
    assert_eq!(
        (disabled.status, &disabled.text),
        (wrong.status, &wrong.text)
    );
    let r = patch_user(&api, &admin, "olga", json!({ "disabled": false })).await;
    assert_eq!(r.status, 200, "{}", r.text);
    unauthorized(
        &whoami(&api, &olga).await,
        "sessions stay ended after enabling",
    );
    let (olga, _) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    problem(&send_command(&api, &olga).await, 404, "enabled again");

    let r = api
        .call(Method::DELETE, "/api/v1/users/olga", Some(&admin), None)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    unauthorized(&send_command(&api, &olga).await, "deleted user's token");
    unauthorized(
        &api.login("olga", TEST_PASSWORD).await.unwrap(),
        "deleted user",
    );
    // A new user of the same name does not inherit the old sessions.
    api.user(&admin, "olga", "operator").await.unwrap();
    unauthorized(&whoami(&api, &olga).await, "old token, recreated user");

    // Nobody removes themselves.
    for (method, body) in [
        (Method::PATCH, Some(json!({ "role": "viewer" }))),
        (Method::PATCH, Some(json!({ "disabled": true }))),
        (Method::DELETE, None),
    ] {
        let r = api
            .call(
                method.clone(),
                "/api/v1/users/admin",
                Some(&admin),
                body.as_ref(),
            )
            .await
            .unwrap();
        problem(&r, 409, &format!("{method} self"));
    }
    let r = api.get("/api/v1/users", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200);
    let users = r.json();
    let me = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "admin")
        .unwrap();
    assert_eq!(
        (me["role"].clone(), me["disabled"].clone()),
        (json!("admin"), json!(false))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_enabled_admin_stays() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let bea = api.user(&admin, "bea", "admin").await.unwrap();

    // Two admins disable each other at the same time: exactly one of them wins. The other
    // request is refused, as 409 (no enabled admin would be left) or, if it was
    // authenticated after the winner's change, 401.
    let (a, b) = tokio::join!(
        patch_user(&api, &admin, "bea", json!({ "disabled": true })),
        patch_user(&api, &bea, "admin", json!({ "disabled": true })),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert!(
        statuses == [200, 401] || statuses == [200, 409],
        "{} {} / {} {}",
        a.status,
        a.text,
        b.status,
        b.text
    );
    let (winner, survivor) = if a.status == 200 {
        (&admin, "admin")
    } else {
        (&bea, "bea")
    };
    assert_eq!(whoami(&api, winner).await.json()["name"], survivor);
    let r = api.get("/api/v1/users", Some(winner)).await.unwrap();
    let enabled: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["role"] == "admin" && u["disabled"] == false)
        .map(|u| u["name"].clone())
        .collect();
    assert_eq!(enabled, [json!(survivor)]);

    // The command line cannot remove the last enabled admin either.
    for args in [
        vec!["user", "disable", survivor],
        vec!["user", "delete", survivor],
        vec!["user", "set-role", survivor, "operator"],
    ] {
        let out = ctl.cli(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("no enabled admin"), "{args:?}: {err}");
    }
    let r = api.get("/api/v1/users", Some(winner)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
}

//! The permission table, enforced end to end: every route in
//! `pifleet_controller::auth::rbac::ROUTES`, asked by anonymous, a bad token, a viewer, an
//! operator and an admin, answers as the table says (device routes refuse them all: they
//! take a device certificate, see `deploy.rs`); and the table lists exactly the routes the
//! served OpenAPI document describes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use pifleet_controller::auth::rbac::{ROUTES, Route};
use pifleet_controller::auth::{Permission, Role};
use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::harness::Controller;
use reqwest::Method;
use serde_json::json;

/// Limits high enough that the per-IP limiter on /api/v1/auth/* never gets in the way.
const ROOMY: &str = "[auth]\nrate_per_minute = 100000\nrate_burst = 100000";
const LOGOUT: &str = "/api/v1/auth/logout";

/// A request path for a table entry with harmless, nonexistent path parameters.
fn fill(path: &str) -> String {
    // The event stream stays open for a permitted caller: an invalid device list makes it
    // answer at once (400 after the permission check, 401/403 before it).
    if path == "/api/v1/events" {
        return format!("{path}?devices=NOT_AN_ID");
    }
    let id = if path.starts_with("/api/v1/commands/") {
        "0".repeat(32)
    } else if path.starts_with("/api/v1/me/sessions/") {
        hex::encode(rand::random::<[u8; 16]>())
    } else if path.starts_with("/api/v1/tokens/") {
        "0".repeat(12)
    } else {
        "pi-none".to_owned()
    };
    path.replace("{id}", &id).replace("{name}", "nobody")
}

/// Sends the route with an empty JSON object as the body where one is expected.
async fn call(api: &Api, route: &Route, token: Option<&str>) -> Resp {
    let method = Method::from_bytes(route.method.as_bytes()).unwrap();
    let body = matches!(route.method, "POST" | "PUT" | "PATCH").then(|| json!({}));
    api.call(method, &fill(route.path), token, body.as_ref())
        .await
        .unwrap()
}

/// What the table says `role` (`None`: not signed in) must get.
fn expected(route: &Route, role: Option<Role>) -> Option<u16> {
    match (route.perm, role) {
        (Permission::Public, _) => None,
        // Only a device certificate opens device routes: users and tokens have none.
        (Permission::Device, _) => Some(401),
        (_, None) => Some(401),
        (perm, Some(role)) if role.allows(perm) => None,
        _ => Some(403),
    }
}

/// Checks one answer; returns a description of what is wrong, if anything.
fn mismatch(route: &Route, who: &str, role: Option<Role>, r: &Resp) -> Option<String> {
    let doc = r.json();
    let wrong = match expected(route, role) {
        // A refresh without a refresh token is refused by the handler itself (the route is
        // public: the guard let it through), which says what is missing.
        None if route.path == "/api/v1/auth/refresh" => {
            [401, 403].contains(&r.status) && doc["detail"] != "no refresh token"
        }
        None => [401, 403].contains(&r.status),
        Some(401) => r.status != 401 || r.header("www-authenticate") != "Bearer",
        Some(403) => {
            r.status != 403
                || doc.get("code").is_some()
                || !doc["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&format!("your role ({})", role.map_or("", Role::as_str)))
        }
        Some(s) => r.status != s,
    };
    let is_problem = r.status < 400 || r.header("content-type") == "application/problem+json";
    (wrong || !is_problem).then(|| {
        format!(
            "{} {} as {who}: expected {}, got {} {}",
            route.method,
            route.path,
            expected(route, role).map_or("neither 401 nor 403".to_owned(), |s| s.to_string()),
            r.status,
            r.text
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_table_says() {
    let ctl = Controller::start_with(ROOMY).await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let viewer = api.user(&admin, "vera", "viewer").await.unwrap();
    let operator = api.user(&admin, "olga", "operator").await.unwrap();
    let principals: [(&str, Option<Role>, Option<&str>); 5] = [
        ("anonymous", None, None),
        ("a bad token", None, Some("not-a-token")),
        ("viewer", Some(Role::Viewer), Some(&viewer)),
        ("operator", Some(Role::Operator), Some(&operator)),
        ("admin", Some(Role::Admin), Some(&admin)),
    ];

    let mut wrong = Vec::new();
    let mut checked = 0;
    for route in ROUTES.iter().filter(|r| r.path != LOGOUT) {
        for (who, role, token) in principals {
            let r = call(&api, route, token).await;
            wrong.extend(mismatch(route, who, role, &r));
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(checked, (ROUTES.len() - 1) * principals.len());
    // Every role and every answer class was exercised.
    for perm in [
        Permission::Public,
        Permission::Session,
        Permission::Read,
        Permission::Operate,
        Permission::Admin,
        Permission::Device,
    ] {
        assert!(ROUTES.iter().any(|r| r.perm == perm), "{perm:?}");
    }

    // Refused mutating requests are audited as denied, under the route's action.
    let r = api
        .get(
            "/api/v1/audit?actor=user:vera&action=command.send",
            Some(&admin),
        )
        .await
        .unwrap();
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", r.text);
    assert_eq!(items[0]["outcome"], "denied");
    assert_eq!(items[0]["target"], "/api/v1/commands");
    // The sessions used above are all still alive: nothing in the matrix signed anyone out.
    for (who, _, token) in &principals[2..] {
        let r = api.get("/api/v1/whoami", *token).await.unwrap();
        assert_eq!(r.status, 200, "{who}: {}", r.text);
    }

    // Logout ends a session, so it is checked last, once per role with a fresh session.
    let logout = ROUTES
        .iter()
        .find(|r| r.path == LOGOUT && r.method == "POST")
        .unwrap();
    assert_eq!(logout.perm, Permission::Session);
    for (who, role, token) in &principals[..2] {
        let r = call(&api, logout, *token).await;
        assert!(
            mismatch(logout, who, *role, &r).is_none(),
            "{who}: {}",
            r.text
        );
    }
    for (name, role) in [
        ("vera", Role::Viewer),
        ("olga", Role::Operator),
        ("admin", Role::Admin),
    ] {
        let (access, refresh) = api.tokens(name, TEST_PASSWORD).await.unwrap();
        let r = call(&api, logout, Some(&access)).await;
        assert_eq!(r.status, 204, "{name}: {}", r.text);
        assert!(mismatch(logout, name, Some(role), &r).is_none());
        let r = api.get("/api/v1/whoami", Some(&access)).await.unwrap();
        assert_eq!(r.status, 401, "{name} after logout: {}", r.text);
        let r = api
            .post(
                "/api/v1/auth/refresh",
                None,
                &json!({ "refresh_token": refresh }),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{name} refresh after logout: {}", r.text);
    }
    // Only the sessions that logged out ended.
    for (who, _, token) in &principals[2..] {
        let r = api.get("/api/v1/whoami", *token).await.unwrap();
        assert_eq!(r.status, 200, "{who}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_lists_exactly_the_documented_routes() {
    let ctl = Controller::start_with(ROOMY).await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api.get("/api/v1/openapi.json", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = r.json();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if [
                "get", "post", "put", "patch", "delete", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    // The document does not describe the route that serves it; every other table entry
    // is documented, and nothing documented is missing from the table.
    let self_route = ("GET".to_owned(), "/api/v1/openapi.json".to_owned());
    assert!(!documented.contains(&self_route));
    documented.insert(self_route);
    let table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(table.len(), ROUTES.len(), "duplicate table entries");
    assert_eq!(documented, table);
}

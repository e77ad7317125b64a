//! The admin API's OpenAPI document: public, served with the security headers, and
//! declaring bearer authentication for every operation but the public ones; and the
//! `pifleet-openapi` binary prints the same document.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::Api;
use pifleet_tests::fleetkit::assert_security_headers;
use pifleet_tests::harness::Controller;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_public_and_declares_bearer_auth() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api.get("/api/v1/openapi.json", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "application/json");
    assert_security_headers(&r, "openapi.json");
    let doc: Value = serde_json::from_str(&r.text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" })
    );
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{id}/labels", "put"),
        ("/api/v1/commands", "post"),
        ("/api/v1/tokens/{id}", "delete"),
        ("/api/v1/audit/verify", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} not documented");
        // Protected operations inherit the global bearer requirement.
        assert!(op.get("security").is_none(), "{method} {path}: {op}");
    }
    // Public operations say so.
    for path in ["/api/v1/auth/login", "/api/v1/enroll"] {
        assert_eq!(paths[path]["post"]["security"], json!([{}]), "{path}");
    }
}

/// `pifleet-openapi` (what the dashboard's types are generated from) prints exactly the
/// served document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_binary_prints_the_served_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pifleet-openapi"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api.get("/api/v1/openapi.json", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let served: Value = serde_json::from_str(&r.text).unwrap();
    if let Some(at) = first_difference(&printed, &served, String::new()) {
        panic!(
            "pifleet-openapi and /api/v1/openapi.json differ at {at} (both binaries built \
             from this tree? `cargo build --workspace`)"
        );
    }
}

/// Where `a` and `b` first differ, as a path of keys and indexes.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .keys()
            .chain(y.keys().filter(|k| !x.contains_key(*k)))
            .find_map(|k| match (x.get(k), y.get(k)) {
                (Some(xv), Some(yv)) => first_difference(xv, yv, format!("{at}/{k}")),
                _ => Some(format!("{at}/{k}")),
            }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (xv, yv))| first_difference(xv, yv, format!("{at}/{i}"))),
        _ => (a != b).then(|| if at.is_empty() { "/".to_owned() } else { at }),
    }
}

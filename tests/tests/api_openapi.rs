//! The admin API's OpenAPI document: public, served with the security headers, and
//! declaring bearer authentication for every operation but the public ones.

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

//! Checks on the admin API's answers that the fleet and the sign-in tests share: problem
//! documents (RFC 9457) and audit reads. Like the tests, these helpers assert and panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::Method;
use serde_json::Value;

use crate::api::{Api, Resp};

/// Asserts that `r` is a whole problem document with `status`: the status, the media type,
/// `status`, `type` `about:blank`, a `title` and a non-empty `detail`. Returns the document.
pub fn problem(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{what}: {}",
        r.text
    );
    let doc = r.json();
    assert_eq!(doc["status"], status, "{what}: {}", r.text);
    assert_eq!(doc["type"], "about:blank", "{what}: {}", r.text);
    assert!(doc["title"].is_string(), "{what}: {}", r.text);
    assert!(
        doc["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{what}: {}",
        r.text
    );
    doc
}

/// The audit entries (at most 1,000, newest first) read with `token`, only those of
/// `action` when given; `headers` go with the request (e.g. `X-Forwarded-For` behind a
/// trusted proxy).
pub async fn audit(
    api: &Api,
    token: &str,
    action: Option<&str>,
    headers: &[(&str, &str)],
) -> Vec<Value> {
    let path = match action {
        Some(action) => format!("/api/v1/audit?action={action}&limit=1000"),
        None => "/api/v1/audit?limit=1000".to_owned(),
    };
    let r = api
        .call_with(Method::GET, &path, Some(token), None, headers)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["items"].as_array().unwrap().clone()
}

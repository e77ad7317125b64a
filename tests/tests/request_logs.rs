//! Structured request logs: every HTTPS request runs in a span with its request id (taken
//! from `X-Request-Id` or generated, and returned in the response), and passwords, tokens
//! and TOTP codes sent to the API never reach the log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::Method;
use serde_json::{Value, json};

use pifleet_tests::api::TEST_PASSWORD;
use pifleet_tests::authkit::{code, enrol_mfa, start};

/// The controller's JSON log lines.
fn lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_everywhere_and_no_secrets_in_logs() {
    let (ctl, api) = start("").await;

    // A client-chosen request id is kept, returned, and on the request's log lines.
    let rid = "req-7f3a-login";
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&json!({ "username": "admin", "password": "Wrong-but-secret-99!" })),
            &[("x-request-id", rid)],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-request-id"), rid);

    // A made-up or unusable id is replaced by a generated one (16 hex digits).
    for sent in [None, Some("bad id with spaces"), Some(&*"x".repeat(65))] {
        let headers: Vec<(&str, &str)> = sent.map(|s| ("x-request-id", s)).into_iter().collect();
        let r = api
            .call_with(Method::GET, "/healthz", None, None, &headers)
            .await
            .unwrap();
        let got = r.header("x-request-id");
        assert_eq!(got.len(), 16, "{got:?}");
        assert!(got.bytes().all(|b| b.is_ascii_hexdigit()), "{got:?}");
        assert_ne!(Some(got.as_str()), sent);
    }

    // Secrets travel in requests: passwords, an access and a refresh token, a TOTP code and
    // a recovery code.
    let admin = api.admin(&ctl).await.unwrap();
    let (secret, recovery, step) = enrol_mfa(&api, &admin).await;
    let r = api.login("admin", TEST_PASSWORD).await.unwrap();
    let mfa_token = r.json()["mfa_token"].as_str().unwrap().to_owned();
    let totp = code(&secret, step + 1);
    let r = api
        .post(
            "/api/v1/auth/login/mfa",
            None,
            &json!({ "mfa_token": mfa_token, "code": totp }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    let access = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = api
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({ "refresh_token": refresh }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.get("/api/v1/whoami", Some(&access)).await.unwrap();
    assert_eq!(r.status, 200);

    let log = ctl.log();
    for (what, secret) in [
        ("one-time password", ctl.admin_password.as_str()),
        ("password", TEST_PASSWORD),
        ("wrong password", "Wrong-but-secret-99!"),
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        ("mfa token", mfa_token.as_str()),
        ("TOTP code", totp.as_str()),
        ("recovery code", recovery[0].as_str()),
        ("admin token", admin.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} is in the log:\n{log}");
    }

    // Every line logged while serving the first request carries its id, and the request's
    // own summary line is one of them.
    let all = lines(&log);
    let of_request: Vec<&Value> = all
        .iter()
        .filter(|l| l["span"]["request_id"] == rid)
        .collect();
    assert!(
        of_request.iter().any(|l| l["message"] == "request done"
            && l["status"] == 401
            && l["span"]["path"] == "/api/v1/auth/login"
            && l["span"]["method"] == "POST"),
        "{of_request:#?}"
    );
    // Every request-summary line has a span with a request id.
    let summaries: Vec<&Value> = all
        .iter()
        .filter(|l| l["message"] == "request done")
        .collect();
    assert!(!summaries.is_empty());
    for l in summaries {
        assert!(
            l["span"]["request_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{l}"
        );
    }
}

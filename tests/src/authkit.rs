//! Shared pieces of the admin-API sign-in tests (`tests/api_sessions.rs`, `api_users.rs`,
//! `api_bruteforce.rs`, `api_mfa.rs`, `api_audit.rs`): a controller without the auth rate
//! limit, 401 checks, token refresh and TOTP enrolment (problem documents and audit reads
//! are in `apikit`). Like the tests, these helpers assert and panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_controller::auth::totp::code_at;
use serde_json::json;

use crate::api::{Api, Resp};
use crate::apikit::problem;
use crate::harness::{Controller, now_ms};

/// A controller whose per-IP limiter on /api/v1/auth/* never gets in the way, with `auth`
/// (more `[auth]` settings) added.
pub async fn start(auth: &str) -> (Controller, Api) {
    let ctl = Controller::start_with(&format!(
        "[auth]\nrate_per_minute = 100000\nrate_burst = 100000\n{auth}"
    ))
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    (ctl, api)
}

/// Opens `n` keep-alive connections to the controller (`n` requests at once to /healthz), so
/// that `n` requests sent next all leave at the same moment instead of one TLS handshake
/// after another.
pub async fn warm_connections(api: &Api, n: usize) {
    let rs = futures_util::future::join_all((0..n).map(|_| api.get("/healthz", None))).await;
    for r in rs {
        assert_eq!(r.unwrap().status, 200);
    }
}

/// A 401 problem that asks for a bearer token.
pub fn unauthorized(r: &Resp, what: &str) {
    problem(r, 401, what);
    assert_eq!(r.header("www-authenticate"), "Bearer", "{what}");
}

/// `GET /api/v1/whoami` with `token`.
pub async fn whoami(api: &Api, token: &str) -> Resp {
    api.get("/api/v1/whoami", Some(token)).await.unwrap()
}

/// `POST /api/v1/auth/refresh` with `token` in the body.
pub async fn refresh(api: &Api, token: &str) -> Resp {
    api.post(
        "/api/v1/auth/refresh",
        None,
        &json!({ "refresh_token": token }),
    )
    .await
    .unwrap()
}

/// The `Retry-After` header in seconds (panics if absent or not a number).
pub fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {:?}", r.header("retry-after")))
}

/// `POST /api/v1/commands`: a ping to an unknown device.
pub async fn send_command(api: &Api, token: &str) -> Resp {
    api.post(
        "/api/v1/commands",
        Some(token),
        &json!({ "devices": ["pi-none"], "action": { "kind": "ping" } }),
    )
    .await
    .unwrap()
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    now_ms() / 1000
}

// ---- TOTP --------------------------------------------------------------------------------

/// RFC 4648 base32 (no padding needed), as in otpauth URIs.
pub fn base32(s: &str) -> Vec<u8> {
    let (mut bits, mut n, mut out) = (0u64, 0u32, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {s}"),
        };
        bits = (bits << 5) | u64::from(v);
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// The TOTP code of 30-second step `step`.
pub fn code(secret: &[u8], step: i64) -> String {
    code_at(secret, (step * 30) as u64).unwrap()
}

/// Turns MFA on for the holder of `token`: (secret, recovery codes, TOTP step used).
pub async fn enrol_mfa(api: &Api, token: &str) -> (Vec<u8>, Vec<String>, i64) {
    let r = api
        .post("/api/v1/me/mfa", Some(token), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let uri = r.json()["otpauth_uri"].as_str().unwrap().to_owned();
    let secret = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap();
    let secret = base32(secret);
    let step = now_s() / 30;
    let r = api
        .post(
            "/api/v1/me/mfa/confirm",
            Some(token),
            &json!({ "code": code(&secret, step) }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let codes = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (secret, codes, step)
}

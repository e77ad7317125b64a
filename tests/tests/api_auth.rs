//! Sign-in and sessions of the admin API, end to end through the real controller: the forced
//! first password change, hand-forged JWTs, refresh-token rotation and reuse detection,
//! cookie mode with CSRF, role changes taking effect at once, lockout and rate limiting, TOTP
//! MFA, and the audit trail of all of it (including tampering found at the right entry).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use pifleet_controller::auth::Permission;
use pifleet_controller::auth::rbac::ROUTES;
use pifleet_controller::auth::totp::code_at;
use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::harness::Controller;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// A controller whose per-IP limiter on /api/v1/auth/* never gets in the way, with `auth`
/// (more `[auth]` settings) added.
async fn start(auth: &str) -> (Controller, Api) {
    let ctl = Controller::start_with(&format!(
        "[auth]\nrate_per_minute = 100000\nrate_burst = 100000\n{auth}"
    ))
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    (ctl, api)
}

/// Asserts an error response is a problem document with `status`; returns the document.
fn problem(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {} {}", r.status, r.text);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{what}"
    );
    let doc = r.json();
    assert_eq!(doc["status"], status, "{what}: {}", r.text);
    assert_eq!(doc["type"], "about:blank", "{what}");
    assert!(
        doc["title"].is_string() && doc["detail"].is_string(),
        "{what}: {}",
        r.text
    );
    doc
}

/// A 401 problem that asks for a bearer token.
fn unauthorized(r: &Resp, what: &str) {
    problem(r, 401, what);
    assert_eq!(r.header("www-authenticate"), "Bearer", "{what}");
}

async fn whoami(api: &Api, token: &str) -> Resp {
    api.get("/api/v1/whoami", Some(token)).await.unwrap()
}

async fn refresh(api: &Api, token: &str) -> Resp {
    api.post(
        "/api/v1/auth/refresh",
        None,
        &json!({ "refresh_token": token }),
    )
    .await
    .unwrap()
}

/// The audit entries of `action` (newest first), read as admin.
async fn audit(api: &Api, admin: &str, action: &str) -> Vec<Value> {
    let r = api
        .get(
            &format!("/api/v1/audit?action={action}&limit=1000"),
            Some(admin),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["items"].as_array().unwrap().clone()
}

/// A request path for a table entry with harmless, nonexistent path parameters.
fn fill(path: &str) -> String {
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

// ---- JWTs by hand ------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token's header and claims.
fn decode(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = || {
        let part = parts.next().unwrap();
        serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    (next(), next())
}

/// Header and claims, signed with `secret` under `alg`.
fn sign(header: &Value, claims: &Value, secret: &[u8], alg: Algorithm) -> String {
    let msg = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig =
        jsonwebtoken::crypto::sign(msg.as_bytes(), &EncodingKey::from_secret(secret), alg).unwrap();
    format!("{msg}.{sig}")
}

/// The controller's current signing key from `jwt.key`: (kid, secret).
fn signing_key(ctl: &Controller) -> (String, Vec<u8>) {
    let file: Value =
        serde_json::from_slice(&std::fs::read(ctl.data.join("jwt.key")).unwrap()).unwrap();
    let key = &file["keys"][0];
    (
        key["kid"].as_str().unwrap().to_owned(),
        hex::decode(key["secret"].as_str().unwrap()).unwrap(),
    )
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---- TOTP --------------------------------------------------------------------------------

/// RFC 4648 base32 (no padding needed), as in otpauth URIs.
fn base32(s: &str) -> Vec<u8> {
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
fn code(secret: &[u8], step: i64) -> String {
    code_at(secret, (step * 30) as u64).unwrap()
}

/// A 6-digit code that is valid for none of the steps around `step`.
fn wrong_code(secret: &[u8], step: i64) -> String {
    let valid: Vec<String> = (step - 3..=step + 3).map(|s| code(secret, s)).collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap()
}

/// Turns MFA on for the holder of `token`: (secret, recovery codes, TOTP step used).
async fn enrol_mfa(api: &Api, token: &str) -> (Vec<u8>, Vec<String>, i64) {
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

/// Password step of an MFA user: the `mfa_token`.
async fn mfa_token(api: &Api, user: &str) -> String {
    let r = api.login(user, TEST_PASSWORD).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["mfa_required"], true, "{}", r.text);
    j["mfa_token"].as_str().unwrap().to_owned()
}

async fn login_mfa(api: &Api, mfa_token: &str, field: &str, code: &str) -> Resp {
    api.post(
        "/api/v1/auth/login/mfa",
        None,
        &json!({ "mfa_token": mfa_token, field: code }),
    )
    .await
    .unwrap()
}

// ---- 1. first sign-in --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_login_requires_a_password_change() {
    let (ctl, api) = start("").await;
    let otp = ctl.admin_password.clone();
    let r = api.login("admin", &otp).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["user"]["must_change_password"], true);
    let (access, _) = api.tokens("admin", &otp).await.unwrap();
    let (other, other_refresh) = api.tokens("admin", &otp).await.unwrap();

    // Everything but the user's own account is closed until the password is changed.
    for route in ROUTES.iter().filter(|r| r.path != "/api/v1/auth/logout") {
        let path = fill(route.path);
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let body = (route.method != "GET" && route.method != "DELETE").then(|| json!({}));
        let r = api
            .call(method, &path, Some(&access), body.as_ref())
            .await
            .unwrap();
        let what = format!("{} {path}", route.method);
        match route.perm {
            Permission::Public | Permission::Session => {
                assert!(![401, 403].contains(&r.status), "{what}: {}", r.text);
            }
            _ => {
                let doc = problem(&r, 403, &what);
                assert_eq!(doc["code"], "password_change_required", "{what}");
                assert!(
                    doc["detail"]
                        .as_str()
                        .unwrap()
                        .contains("/api/v1/me/password"),
                    "{what}: {}",
                    r.text
                );
            }
        }
    }
    let w = whoami(&api, &access).await;
    assert_eq!(w.status, 200);
    assert_eq!(w.json()["must_change_password"], true);
    let (third, _) = api.tokens("admin", &otp).await.unwrap();
    let r = api
        .post("/api/v1/auth/logout", Some(&third), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "logout before the change: {}", r.text);

    // Weak or unchanged passwords are refused with a reason.
    let change =
        |current: &str, new: &str| json!({ "current_password": current, "new_password": new });
    for (new, why) in [
        ("Sh0rt!pw", "too short"),
        ("password1234", "too easy to guess"),
        ("admin12345678", "too easy to guess"),
        (otp.as_str(), "must differ"),
    ] {
        let r = api
            .post("/api/v1/me/password", Some(&access), &change(&otp, new))
            .await
            .unwrap();
        let doc = problem(&r, 400, new);
        assert!(
            doc["detail"].as_str().unwrap().contains(why),
            "{new}: {}",
            r.text
        );
    }
    let r = api
        .post(
            "/api/v1/me/password",
            Some(&access),
            &change("not-the-password", TEST_PASSWORD),
        )
        .await
        .unwrap();
    problem(&r, 403, "wrong current password");
    assert_eq!(
        whoami(&api, &access).await.json()["must_change_password"],
        true
    );

    let r = api
        .post(
            "/api/v1/me/password",
            Some(&access),
            &change(&otp, TEST_PASSWORD),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    // This session carries on with full rights; every other session of the user has ended.
    assert_eq!(
        api.get("/api/v1/users", Some(&access))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        whoami(&api, &access).await.json()["must_change_password"],
        false
    );
    unauthorized(&whoami(&api, &other).await, "other session's access token");
    unauthorized(
        &refresh(&api, &other_refresh).await,
        "other session's refresh",
    );
    unauthorized(&api.login("admin", &otp).await.unwrap(), "old password");
    let r = api.login("admin", TEST_PASSWORD).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["user"]["must_change_password"], false);
}

// ---- 2. forged and misused tokens --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misused_tokens_are_refused() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let (viewer, viewer_refresh) = {
        api.user(&admin, "vera", "viewer").await.unwrap();
        api.tokens("vera", TEST_PASSWORD).await.unwrap()
    };
    let (kid, secret) = signing_key(&ctl);
    let (header, claims) = decode(&viewer);
    let (_, admin_claims) = decode(&admin);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["kid"], kid.as_str());
    assert_eq!(claims["typ"], "access");

    // Control: a token signed here with the real key works, so each refusal below is down
    // to the one thing that was changed.
    let good = sign(&header, &claims, &secret, Algorithm::HS256);
    let r = whoami(&api, &good).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["name"], "vera");

    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    let real_sig = viewer.rsplit('.').next().unwrap();
    let keep_sig = |claims: &Value| {
        format!(
            "{}.{}.{real_sig}",
            viewer.split('.').next().unwrap(),
            b64(claims.to_string().as_bytes())
        )
    };
    let now = now_s();
    let cases = [
        (
            "alg none, no signature",
            format!(
                "{}.{}.",
                b64(with(header.clone(), "alg", json!("none"))
                    .to_string()
                    .as_bytes()),
                b64(claims.to_string().as_bytes())
            ),
        ),
        (
            "alg none, real signature kept",
            format!(
                "{}.{}.{real_sig}",
                b64(with(header.clone(), "alg", json!("none"))
                    .to_string()
                    .as_bytes()),
                viewer.split('.').nth(1).unwrap()
            ),
        ),
        (
            "another HS256 key",
            sign(
                &header,
                &claims,
                b"not-the-controller-key-0123456789abcdef",
                Algorithm::HS256,
            ),
        ),
        (
            "HS512 with the real key",
            sign(
                &with(header.clone(), "alg", json!("HS512")),
                &claims,
                &secret,
                Algorithm::HS512,
            ),
        ),
        (
            "unknown kid, real key",
            sign(
                &with(header.clone(), "kid", json!("00112233aabbccdd")),
                &claims,
                &secret,
                Algorithm::HS256,
            ),
        ),
        (
            "no kid, real key",
            sign(
                &json!({ "alg": "HS256", "typ": "JWT" }),
                &claims,
                &secret,
                Algorithm::HS256,
            ),
        ),
        (
            "expired",
            sign(
                &header,
                &with(
                    with(claims.clone(), "exp", json!(now - 60)),
                    "iat",
                    json!(now - 960),
                ),
                &secret,
                Algorithm::HS256,
            ),
        ),
        (
            "typ mfa used as access",
            sign(
                &header,
                &with(claims.clone(), "typ", json!("mfa")),
                &secret,
                Algorithm::HS256,
            ),
        ),
        (
            "real key, another user's session",
            sign(
                &header,
                &with(claims.clone(), "sid", admin_claims["sid"].clone()),
                &secret,
                Algorithm::HS256,
            ),
        ),
        (
            "sub changed to the admin, signature kept",
            keep_sig(&with(claims.clone(), "sub", admin_claims["sub"].clone())),
        ),
        (
            "role claim added, signature kept",
            keep_sig(&with(claims.clone(), "role", json!("admin"))),
        ),
        (
            "exp extended, signature kept",
            keep_sig(&with(claims.clone(), "exp", json!(now + 86_400))),
        ),
        ("refresh token as bearer", viewer_refresh.clone()),
        ("not a JWT", "garbage".to_owned()),
    ];
    for (what, token) in &cases {
        unauthorized(&whoami(&api, token).await, what);
        unauthorized(&api.get("/api/v1/users", Some(token)).await.unwrap(), what);
    }
    let r = api
        .call_with(
            Method::GET,
            "/api/v1/whoami",
            None,
            None,
            &[(
                "authorization",
                &format!("Basic {}", STANDARD.encode("vera:x")),
            )],
        )
        .await
        .unwrap();
    unauthorized(&r, "basic auth");

    // An access token is no refresh token, in the body or in the cookie.
    unauthorized(&refresh(&api, &viewer).await, "access token as refresh");
    // The viewer's real tokens still work: nothing above hurt the session.
    assert_eq!(whoami(&api, &viewer).await.status, 200);
    let r = refresh(&api, &viewer_refresh).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

// ---- 3. refresh rotation, reuse, logout --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_ends_the_session() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    api.user(&admin, "olga", "operator").await.unwrap();
    let (a1, r1) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let (other, _) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let sid = decode(&a1).1["sid"].as_str().unwrap().to_owned();

    let resp = refresh(&api, &r1).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let j = resp.json();
    let (a2, r2) = (
        j["access_token"].as_str().unwrap().to_owned(),
        j["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(r2, r1);
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["user"]["name"], "olga");
    assert_eq!(decode(&a2).1["sid"], sid.as_str(), "same session");
    let resp = refresh(&api, &r2).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let r3 = resp.json()["refresh_token"].as_str().unwrap().to_owned();
    for t in [&a1, &a2] {
        assert_eq!(whoami(&api, t).await.status, 200);
    }

    // r1 was rotated: presenting it again means someone holds a copy.
    unauthorized(&refresh(&api, &r1).await, "reused refresh token");
    unauthorized(&refresh(&api, &r3).await, "newest token of the family");
    unauthorized(&refresh(&api, &r2).await, "middle token of the family");
    unauthorized(&whoami(&api, &a1).await, "access token of the family");
    unauthorized(&whoami(&api, &a2).await, "access token of the family");
    assert_eq!(
        whoami(&api, &other).await.status,
        200,
        "another session of the same user is not affected"
    );
    // Newest first: r2 was a reuse too, of a family r1 had already ended; r3 was never used,
    // so it is merely invalid now.
    let events = audit(&api, &admin, "auth.refresh_reuse").await;
    let seen: Vec<(&Value, &Value, &Value)> = events
        .iter()
        .map(|e| (&e["actor"], &e["target"], &e["outcome"]))
        .collect();
    let target = json!(format!("session {sid}"));
    assert_eq!(
        seen,
        [
            (
                &json!("user:olga"),
                &target,
                &json!("session already ended")
            ),
            (&json!("user:olga"), &target, &json!("session revoked")),
        ]
    );

    // Logout ends the session's access and refresh tokens at once.
    let (a, r) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let out = api
        .post("/api/v1/auth/logout", Some(&a), &json!({}))
        .await
        .unwrap();
    assert_eq!(out.status, 204, "{}", out.text);
    assert!(out.text.is_empty());
    unauthorized(&whoami(&api, &a).await, "access token after logout");
    unauthorized(&refresh(&api, &r).await, "refresh token after logout");
    unauthorized(
        &api.post("/api/v1/auth/logout", Some(&a), &json!({}))
            .await
            .unwrap(),
        "second logout",
    );
    assert_eq!(whoami(&api, &other).await.status, 200);

    // Sessions can be ended one by one, but only by their owner.
    let (a, r) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let sid = decode(&a).1["sid"].as_str().unwrap().to_owned();
    let end = |token: String| {
        let api = api.clone();
        let path = format!("/api/v1/me/sessions/{sid}");
        async move {
            api.call(Method::DELETE, &path, Some(&token), None)
                .await
                .unwrap()
        }
    };
    problem(&end(admin.clone()).await, 404, "someone else's session");
    assert_eq!(whoami(&api, &a).await.status, 200);
    let r2 = end(other.clone()).await;
    assert_eq!(r2.status, 204, "{}", r2.text);
    unauthorized(&whoami(&api, &a).await, "ended session");
    unauthorized(&refresh(&api, &r).await, "ended session's refresh token");

    // A session past its lifetime is over for access and refresh tokens alike.
    let (a, r) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let sid = decode(&a).1["sid"].as_str().unwrap().to_owned();
    let db = db_rw(&ctl).await;
    sqlx::query("UPDATE sessions SET expires_at = 0 WHERE id = ?")
        .bind(&sid)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    unauthorized(&whoami(&api, &a).await, "expired session");
    unauthorized(&refresh(&api, &r).await, "expired session's refresh token");
}

// ---- 4. cookie mode ----------------------------------------------------------------------

/// The value and attributes of the `name` cookie among `Set-Cookie` headers.
fn set_cookie(r: &Resp, name: &str) -> (String, Vec<String>) {
    let prefix = format!("{name}=");
    let c = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", r.set_cookies()));
    let mut parts = c.split(';').map(|p| p.trim().to_owned());
    let value = parts.next().unwrap()[prefix.len()..].to_owned();
    (value, parts.collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_mode_refresh_needs_the_csrf_header() {
    let (ctl, api) = start("").await;
    api.admin(&ctl).await.unwrap();
    let r = api
        .post(
            "/api/v1/auth/login",
            None,
            &json!({ "username": "admin", "password": TEST_PASSWORD, "cookie": true }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert!(j.get("refresh_token").is_none(), "{}", r.text);
    assert!(j["access_token"].is_string());
    let (refresh_c, attrs) = set_cookie(&r, "pifleet_refresh");
    assert!(refresh_c.starts_with("pfr1."), "{refresh_c}");
    for a in ["Path=/api/v1/auth", "HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(
            attrs.iter().any(|x| x == a),
            "pifleet_refresh lacks {a}: {attrs:?}"
        );
    }
    let (csrf, attrs) = set_cookie(&r, "pifleet_csrf");
    assert!(!csrf.is_empty());
    assert!(!attrs.iter().any(|x| x == "HttpOnly"), "{attrs:?}");
    for a in ["Secure", "SameSite=Strict"] {
        assert!(
            attrs.iter().any(|x| x == a),
            "pifleet_csrf lacks {a}: {attrs:?}"
        );
    }

    let cookies = format!("pifleet_refresh={refresh_c}; pifleet_csrf={csrf}");
    let cookie_refresh = |headers: Vec<(&'static str, String)>| {
        let api = api.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.call_with(Method::POST, "/api/v1/auth/refresh", None, None, &h)
                .await
                .unwrap()
        }
    };
    let r = cookie_refresh(vec![("cookie", cookies.clone())]).await;
    problem(&r, 403, "no CSRF header");
    let r = cookie_refresh(vec![
        ("cookie", cookies.clone()),
        ("x-csrf-token", format!("{csrf}0")),
    ])
    .await;
    problem(&r, 403, "wrong CSRF header");
    let r = cookie_refresh(vec![
        ("cookie", format!("pifleet_refresh={refresh_c}")),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    problem(&r, 403, "CSRF header without the CSRF cookie");

    // The refused attempts did not use the token up.
    let r = cookie_refresh(vec![
        ("cookie", cookies.clone()),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json().get("refresh_token").is_none(), "{}", r.text);
    assert_eq!(
        whoami(&api, r.json()["access_token"].as_str().unwrap())
            .await
            .status,
        200
    );
    let (new_refresh, attrs) = set_cookie(&r, "pifleet_refresh");
    let (new_csrf, _) = set_cookie(&r, "pifleet_csrf");
    assert_ne!(new_refresh, refresh_c);
    assert!(attrs.iter().any(|x| x == "HttpOnly"));
    let r = cookie_refresh(vec![
        (
            "cookie",
            format!("pifleet_refresh={new_refresh}; pifleet_csrf={new_csrf}"),
        ),
        ("x-csrf-token", new_csrf.clone()),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The first cookie, presented again, is reuse: 401 and the cookies are cleared.
    let r = cookie_refresh(vec![("cookie", cookies), ("x-csrf-token", csrf)]).await;
    unauthorized(&r, "reused refresh cookie");
    let (cleared, attrs) = set_cookie(&r, "pifleet_refresh");
    assert_eq!(cleared, "");
    assert!(attrs.iter().any(|x| x == "Max-Age=0"), "{attrs:?}");
}

// ---- 5. role changes, disable, delete ----------------------------------------------------

async fn send_command(api: &Api, token: &str) -> Resp {
    api.post(
        "/api/v1/commands",
        Some(token),
        &json!({ "devices": ["pi-none"], "action": { "kind": "ping" } }),
    )
    .await
    .unwrap()
}

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

// ---- 6. brute force ----------------------------------------------------------------------

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {:?}", r.header("retry-after")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_lock_the_account_known_or_not() {
    let (ctl, api) = start("").await;
    let mut first: Option<Resp> = None;
    for i in 0..5 {
        let r = api.login("admin", &format!("wrong-{i}")).await.unwrap();
        unauthorized(&r, "wrong password");
        if let Some(f) = &first {
            assert_eq!(r.text, f.text);
        }
        first.get_or_insert(r);
    }
    let wrong = first.unwrap();
    let r = api.login("admin", &ctl.admin_password).await.unwrap();
    problem(&r, 423, "right password while locked");
    assert!(
        (1..=900).contains(&retry_after(&r)),
        "{}",
        r.header("retry-after")
    );
    // The lock is on the name, whatever its case.
    problem(
        &api.login("ADMIN", &ctl.admin_password).await.unwrap(),
        423,
        "upper case",
    );

    for i in 0..5 {
        let r = api.login("ghost", &format!("guess-{i}")).await.unwrap();
        assert_eq!(
            (
                r.status,
                &r.text,
                r.header("content-type"),
                r.header("www-authenticate")
            ),
            (
                wrong.status,
                &wrong.text,
                wrong.header("content-type"),
                wrong.header("www-authenticate")
            ),
            "unknown user answers like a wrong password"
        );
    }
    let r = api.login("ghost", "guess-5").await.unwrap();
    problem(&r, 423, "unknown user locked");
    assert!((1..=900).contains(&retry_after(&r)));
    // Another name is not affected.
    unauthorized(
        &api.login("ghost2", "guess").await.unwrap(),
        "another unknown user",
    );
}

/// A stolen access token must not become an unlimited oracle for the password: wrong
/// current passwords on `POST /api/v1/me/password` count like failed sign-ins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_count_toward_the_lockout() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();
    let change = |current: &str| json!({ "current_password": current, "new_password": "another-quiet-lantern-58" });
    for i in 0..5 {
        let r = api
            .post(
                "/api/v1/me/password",
                Some(&olga),
                &change(&format!("guess-{i}")),
            )
            .await
            .unwrap();
        problem(&r, 403, "wrong current password");
    }
    let r = api
        .post("/api/v1/me/password", Some(&olga), &change(TEST_PASSWORD))
        .await
        .unwrap();
    problem(&r, 423, "password change while locked");
    assert!((1..=900).contains(&retry_after(&r)));
    problem(
        &api.login("olga", TEST_PASSWORD).await.unwrap(),
        423,
        "sign-in while locked",
    );
    // The session itself goes on; the password did not change.
    assert_eq!(whoami(&api, &olga).await.status, 200);
    problem(
        &api.login("olga", "another-quiet-lantern-58").await.unwrap(),
        423,
        "the new password was not set",
    );
    let lockouts = audit(&api, &admin, "auth.lockout").await;
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert_eq!(
        (&lockouts[0]["actor"], &lockouts[0]["target"]),
        (&json!("user:olga"), &json!("olga"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_lifts_after_the_window() {
    let (ctl, api) = start("lockout_window_s = 2").await;
    for i in 0..5 {
        unauthorized(
            &api.login("admin", &format!("wrong-{i}")).await.unwrap(),
            "wrong password",
        );
    }
    let r = api.login("admin", &ctl.admin_password).await.unwrap();
    problem(&r, 423, "locked");
    assert!(
        (1..=2).contains(&retry_after(&r)),
        "{}",
        r.header("retry-after")
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = api.login("admin", &ctl.admin_password).await.unwrap();
        if r.status == 200 {
            break;
        }
        problem(&r, 423, "still locked");
        assert!(Instant::now() < deadline, "the lock did not lift");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_routes_are_rate_limited_per_address() {
    let ctl = Controller::start_with("[auth]\nrate_per_minute = 1\nrate_burst = 4")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let passed = [
        api.login("nobody", "x").await.unwrap(),
        refresh(&api, "pfr1.nothing").await,
        api.post("/api/v1/auth/login/mfa", None, &json!({}))
            .await
            .unwrap(),
        api.login("admin", &ctl.admin_password).await.unwrap(),
    ];
    for r in &passed {
        assert_ne!(r.status, 429, "{}", r.text);
    }
    assert_eq!(passed[3].status, 200, "{}", passed[3].text);
    let r = api.login("admin", &ctl.admin_password).await.unwrap();
    problem(&r, 429, "fifth request");
    assert!(retry_after(&r) >= 1);
    problem(
        &refresh(&api, "pfr1.nothing").await,
        429,
        "other auth route",
    );
    // Routes outside /api/v1/auth/ are not limited.
    let access = passed[3].json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..10 {
        let r = api.get("/healthz", None).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(whoami(&api, &access).await.status, 200);
        unauthorized(
            &api.get("/api/v1/whoami", None).await.unwrap(),
            "anonymous whoami",
        );
    }
}

// ---- 7. MFA ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_enrolment_sign_in_replay_recovery_and_reset() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();

    let r = api
        .post("/api/v1/me/mfa", Some(&olga), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    let uri = j["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains("issuer=pifleet"), "{uri}");
    assert!(uri.contains("olga"), "{uri}");
    let png = STANDARD
        .decode(j["qr_png_base64"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let secret = base32(
        uri.split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap(),
    );
    let db = ctl.db().await.unwrap();
    let pending: Vec<u8> =
        sqlx::query_scalar("SELECT mfa_pending_secret FROM users WHERE name = 'olga'")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(pending, secret);

    let step = now_s() / 30;
    let r = api
        .post(
            "/api/v1/me/mfa/confirm",
            Some(&olga),
            &json!({ "code": wrong_code(&secret, step) }),
        )
        .await
        .unwrap();
    problem(&r, 400, "wrong confirmation code");
    assert_eq!(whoami(&api, &olga).await.json()["mfa_enabled"], false);
    let r = api
        .post(
            "/api/v1/me/mfa/confirm",
            Some(&olga),
            &json!({ "code": code(&secret, step) }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let recovery: Vec<String> = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let mut distinct = recovery.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10);
    assert_eq!(whoami(&api, &olga).await.json()["mfa_enabled"], true);

    // The password alone gives an MFA token and nothing else.
    let r = api.login("olga", TEST_PASSWORD).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert_eq!(j["mfa_required"], true);
    for absent in ["access_token", "refresh_token", "user"] {
        assert!(j.get(absent).is_none(), "{absent} in {}", r.text);
    }
    let mfa = j["mfa_token"].as_str().unwrap().to_owned();
    unauthorized(&whoami(&api, &mfa).await, "MFA token as access token");

    // The confirmation used `step`; the next step's code (within the skew window) signs in.
    let next = code(&secret, step + 1);
    let r = login_mfa(&api, &mfa, "code", &next).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert!(j["refresh_token"].is_string());
    assert_eq!(j["user"]["mfa_enabled"], true);
    let access = j["access_token"].as_str().unwrap();
    assert_eq!(
        api.get("/api/v1/devices", Some(access))
            .await
            .unwrap()
            .status,
        200
    );
    unauthorized(
        &login_mfa(&api, &mfa, "code", &next).await,
        "replayed code, same MFA token",
    );
    let mfa = mfa_token(&api, "olga").await;
    unauthorized(
        &login_mfa(&api, &mfa, "code", &next).await,
        "replayed code, new MFA token",
    );

    // Recovery codes work once each, in any case and grouping.
    let r = login_mfa(&api, &mfa, "recovery_code", &recovery[0]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    unauthorized(
        &login_mfa(&api, &mfa, "recovery_code", &recovery[0]).await,
        "used recovery code",
    );
    let spaced = recovery[1].to_uppercase().replace('-', " ");
    let r = login_mfa(&api, &mfa, "recovery_code", &spaced).await;
    assert_eq!(r.status, 200, "{spaced}: {}", r.text);
    let r = api
        .post(
            "/api/v1/auth/login/mfa",
            None,
            &json!({ "mfa_token": mfa, "code": next, "recovery_code": recovery[2] }),
        )
        .await
        .unwrap();
    problem(&r, 400, "both a code and a recovery code");

    // Already on: setting up again is refused until an admin resets it.
    problem(
        &api.post("/api/v1/me/mfa", Some(access), &json!({}))
            .await
            .unwrap(),
        409,
        "MFA already on",
    );
    let r = api
        .post("/api/v1/users/olga/reset-mfa", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let r = api.login("olga", TEST_PASSWORD).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["mfa_required"], false);
    assert!(r.json()["access_token"].is_string());
    assert_eq!(r.json()["user"]["mfa_enabled"], false);
    unauthorized(
        &login_mfa(&api, &mfa, "recovery_code", &recovery[3]).await,
        "MFA token after the reset",
    );
    problem(
        &api.post("/api/v1/users/nobody/reset-mfa", Some(&admin), &json!({}))
            .await
            .unwrap(),
        404,
        "reset an unknown user",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_mfa_codes_count_toward_the_lockout() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let petra = api.user(&admin, "petra", "viewer").await.unwrap();
    let (secret, recovery, step) = enrol_mfa(&api, &petra).await;
    let mfa = mfa_token(&api, "petra").await;
    for i in 0..5 {
        let r = login_mfa(&api, &mfa, "code", &wrong_code(&secret, step)).await;
        unauthorized(&r, &format!("wrong code {i}"));
    }
    let r = api.login("petra", TEST_PASSWORD).await.unwrap();
    problem(&r, 423, "password step after 5 wrong codes");
    assert!((1..=900).contains(&retry_after(&r)));
    // The second step is locked too, even with a good recovery code.
    problem(
        &login_mfa(&api, &mfa, "recovery_code", &recovery[0]).await,
        423,
        "MFA step while locked",
    );
    let lockouts = audit(&api, &admin, "auth.lockout").await;
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert_eq!(lockouts[0]["target"], "petra");
    assert_eq!(lockouts[0]["actor"], "user:petra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_can_be_required_to_use_mfa() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();
    let vera = api.user(&admin, "vera", "viewer").await.unwrap();
    let settings = json!({ "mfa_required_roles": ["operator"] });
    let r = api
        .call(
            Method::PUT,
            "/api/v1/settings/security",
            Some(&admin),
            Some(&settings),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .get("/api/v1/settings/security", Some(&admin))
        .await
        .unwrap();
    assert_eq!(r.json(), settings);

    for (method, path) in [
        (Method::GET, "/api/v1/devices"),
        (Method::POST, "/api/v1/commands"),
    ] {
        let body = (method == Method::POST).then(|| json!({}));
        let r = api
            .call(method.clone(), path, Some(&olga), body.as_ref())
            .await
            .unwrap();
        let doc = problem(&r, 403, path);
        assert_eq!(doc["code"], "mfa_setup_required", "{path}");
    }
    let w = whoami(&api, &olga).await;
    assert_eq!(w.status, 200);
    assert_eq!(
        (
            w.json()["mfa_required"].clone(),
            w.json()["mfa_enabled"].clone()
        ),
        (json!(true), json!(false))
    );
    assert_eq!(
        api.get("/api/v1/devices", Some(&vera))
            .await
            .unwrap()
            .status,
        200,
        "viewers are not affected"
    );
    assert_eq!(
        api.get("/api/v1/devices", Some(&admin))
            .await
            .unwrap()
            .status,
        200
    );

    enrol_mfa(&api, &olga).await;
    assert_eq!(
        api.get("/api/v1/devices", Some(&olga))
            .await
            .unwrap()
            .status,
        200,
        "the same token works once MFA is on"
    );
    problem(&send_command(&api, &olga).await, 404, "operator sends");
}

// ---- 8. audit ----------------------------------------------------------------------------

/// A writable connection to the live database (the controller keeps running).
async fn db_rw(ctl: &Controller) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(ctl.data.join("pifleet.db"))
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap()
}

/// One statement with one integer parameter.
async fn exec(db: &SqlitePool, sql: &'static str, n: i64) {
    sqlx::query(sql).bind(n).execute(db).await.unwrap();
}

async fn verify(api: &Api, admin: &str) -> Value {
    let r = api.get("/api/v1/audit/verify", Some(admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

/// `audit verify` on the command line: (success, stdout + stderr).
fn cli_verify(ctl: &Controller) -> (bool, String) {
    let out = ctl.cli(&["audit", "verify"]).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn assert_broken_at(ctl: &Controller, api: &Api, admin: &str, seq: i64, what: &str) {
    let v = verify(api, admin).await;
    assert_eq!(v["intact"], false, "{what}: {v}");
    assert_eq!(v["broken_at"], seq, "{what}: {v}");
    let (ok, text) = cli_verify(ctl);
    assert!(!ok, "{what}: {text}");
    assert!(text.contains(&format!("entry {seq} ")), "{what}: {text}");
}

async fn assert_intact(ctl: &Controller, api: &Api, admin: &str, what: &str) {
    let v = verify(api, admin).await;
    assert_eq!(v["intact"], true, "{what}: {v}");
    let (ok, text) = cli_verify(ctl);
    assert!(ok, "{what}: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_events_are_audited_and_tampering_is_found() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();
    let (_, olga_refresh) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let (olga2, _) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    unauthorized(&api.login("olga", "wrong-password").await.unwrap(), "wrong");
    for _ in 0..5 {
        unauthorized(&api.login("ghost", "guess").await.unwrap(), "unknown");
    }
    enrol_mfa(&api, &olga).await;
    let r = api
        .post("/api/v1/auth/logout", Some(&olga2), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(refresh(&api, &olga_refresh).await.status, 200);
    unauthorized(&refresh(&api, &olga_refresh).await, "reuse");

    let has = |events: &[Value], actor: &str, target: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e["actor"] == actor && e["target"] == target && e["outcome"] == outcome)
    };
    let logins = audit(&api, &admin, "auth.login").await;
    for (actor, target, outcome) in [
        ("user:admin", "admin", "ok"),
        ("user:olga", "olga", "ok"),
        ("anonymous", "olga", "failed: wrong password"),
        ("anonymous", "ghost", "failed: unknown user"),
    ] {
        assert!(
            has(&logins, actor, target, outcome),
            "{actor} {target} {outcome}: {logins:?}"
        );
    }
    assert_eq!(logins.iter().filter(|e| e["target"] == "ghost").count(), 5);
    let lockouts = audit(&api, &admin, "auth.lockout").await;
    assert_eq!(lockouts.len(), 1, "{lockouts:?}");
    assert!(has(&lockouts, "anonymous", "ghost", "locked"));
    let mfa = audit(&api, &admin, "auth.mfa_enabled").await;
    assert_eq!(mfa.len(), 1, "{mfa:?}");
    assert!(has(&mfa, "user:olga", "olga", "ok"));
    let logouts = audit(&api, &admin, "auth.logout").await;
    assert_eq!(logouts.len(), 1, "{logouts:?}");
    assert!(has(&logouts, "user:olga", "/api/v1/auth/logout", "ok"));
    let reuse = audit(&api, &admin, "auth.refresh_reuse").await;
    assert_eq!(reuse.len(), 1, "{reuse:?}");
    assert_eq!(reuse[0]["outcome"], "session revoked");
    assert_eq!(reuse[0]["actor"], "user:olga");

    let v = verify(&api, &admin).await;
    assert_eq!(v["intact"], true, "{v}");
    let r = api
        .get("/api/v1/audit?limit=1", Some(&admin))
        .await
        .unwrap();
    let head = r.json()["head"].as_i64().unwrap();
    assert_eq!(v["entries"], head);
    assert!(head > 12, "{head}");
    assert_intact(&ctl, &api, &admin, "before tampering").await;

    // From here on nothing is appended, so the entries keep their numbers.
    let db = db_rw(&ctl).await;
    let (edit, del, ins) = (head - 10, head - 6, head - 3);

    let target: String = sqlx::query_scalar("SELECT target FROM audit_log WHERE seq = ?")
        .bind(edit)
        .fetch_one(&db)
        .await
        .unwrap();
    exec(
        &db,
        "UPDATE audit_log SET target = 'someone-else' WHERE seq = ?",
        edit,
    )
    .await;
    assert_broken_at(&ctl, &api, &admin, edit, "edited").await;
    sqlx::query("UPDATE audit_log SET target = ? WHERE seq = ?")
        .bind(&target)
        .bind(edit)
        .execute(&db)
        .await
        .unwrap();
    assert_intact(&ctl, &api, &admin, "edit undone").await;

    let saved = sqlx::query("SELECT * FROM audit_log WHERE seq = ?")
        .bind(del)
        .fetch_one(&db)
        .await
        .unwrap();
    exec(&db, "DELETE FROM audit_log WHERE seq = ?", del).await;
    assert_broken_at(&ctl, &api, &admin, del, "deleted").await;
    let mut restore = sqlx::query("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    for i in 0..2 {
        restore = restore.bind(saved.get::<i64, _>(i));
    }
    for i in 2..10 {
        restore = restore.bind(saved.get::<String, _>(i));
    }
    restore.execute(&db).await.unwrap();
    assert_intact(&ctl, &api, &admin, "deletion undone").await;

    // An inserted entry, renumbering the rest: a crude forgery breaks at itself; one whose
    // hash is computed properly over its predecessor breaks at the displaced original.
    exec(
        &db,
        "UPDATE audit_log SET seq = seq + 100000 WHERE seq >= ?",
        ins,
    )
    .await;
    exec(
        &db,
        "UPDATE audit_log SET seq = seq - 99999 WHERE seq >= ?",
        100_000,
    )
    .await;
    let prev: String = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = ?")
        .bind(ins - 1)
        .fetch_one(&db)
        .await
        .unwrap();
    let forged = pifleet_controller::audit::Event {
        actor: "user:intruder".into(),
        source: "127.0.0.1".into(),
        action: "user.create".into(),
        target: "/api/v1/users".into(),
        outcome: "ok".into(),
        detail: String::new(),
    };
    let insert = |hash: String| {
        sqlx::query("INSERT INTO audit_log VALUES (?, 0, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(ins)
            .bind(forged.actor.clone())
            .bind(forged.source.clone())
            .bind(forged.action.clone())
            .bind(forged.target.clone())
            .bind(forged.outcome.clone())
            .bind(forged.detail.clone())
            .bind(prev.clone())
            .bind(hash)
    };
    insert("ab".repeat(32)).execute(&db).await.unwrap();
    assert_broken_at(&ctl, &api, &admin, ins, "crude insertion").await;
    exec(&db, "DELETE FROM audit_log WHERE seq = ?", ins).await;
    insert(pifleet_controller::audit::entry_hash(
        &prev, ins, 0, &forged,
    ))
    .execute(&db)
    .await
    .unwrap();
    assert_broken_at(&ctl, &api, &admin, ins + 1, "well-hashed insertion").await;
    exec(&db, "DELETE FROM audit_log WHERE seq = ?", ins).await;
    exec(
        &db,
        "UPDATE audit_log SET seq = seq + 100000 WHERE seq > ?",
        ins,
    )
    .await;
    exec(
        &db,
        "UPDATE audit_log SET seq = seq - 100001 WHERE seq >= ?",
        100_000,
    )
    .await;
    assert_intact(&ctl, &api, &admin, "insertion undone").await;
    db.close().await;

    // The chain goes on being appended to after all that.
    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let v = verify(&api, &admin).await;
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["entries"], head + 1);
}

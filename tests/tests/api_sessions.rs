//! Sign-in and sessions of the admin API, end to end through the real controller: the forced
//! first password change, hand-forged JWTs, refresh-token rotation and reuse detection,
//! logout and ending sessions, and cookie mode with CSRF.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use pifleet_controller::auth::Permission;
use pifleet_controller::auth::rbac::ROUTES;
use pifleet_tests::api::{Resp, TEST_PASSWORD};
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::authkit::{now_s, refresh, start, unauthorized, whoami};
use pifleet_tests::harness::Controller;
use reqwest::Method;
use serde_json::{Value, json};

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

// ---- first sign-in -----------------------------------------------------------------------

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
    let (_, pending_refresh) = api.tokens("admin", &otp).await.unwrap();
    for route in ROUTES.iter().filter(|r| r.path != "/api/v1/auth/logout") {
        let path = fill(route.path);
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let body = if route.path == "/api/v1/auth/refresh" {
            Some(json!({ "refresh_token": pending_refresh }))
        } else {
            (route.method != "GET" && route.method != "DELETE").then(|| json!({}))
        };
        let r = api
            .call(method, &path, Some(&access), body.as_ref())
            .await
            .unwrap();
        let what = format!("{} {path}", route.method);
        match route.perm {
            Permission::Public | Permission::Session => {
                assert!(![401, 403].contains(&r.status), "{what}: {}", r.text);
            }
            // Only a device certificate opens a device route, whoever signed in.
            Permission::Device => {
                problem(&r, 401, &what);
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

// ---- forged and misused tokens -----------------------------------------------------------

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

// ---- refresh rotation, reuse, logout -----------------------------------------------------

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
    let events = audit(&api, &admin, Some("auth.refresh_reuse"), &[]).await;
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
    let db = ctl.db_rw().await.unwrap();
    sqlx::query("UPDATE sessions SET expires_at = 0 WHERE id = ?")
        .bind(&sid)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    unauthorized(&whoami(&api, &a).await, "expired session");
    unauthorized(&refresh(&api, &r).await, "expired session's refresh token");
}

// ---- cookie mode -------------------------------------------------------------------------

/// The refresh cookie: `__Secure-` because its path is `/api/v1/auth` (`__Host-` needs `/`).
const REFRESH: &str = "__Secure-pifleet_refresh";
/// The CSRF cookie: `__Host-` (Secure, `Path=/`, no Domain).
const CSRF: &str = "__Host-pifleet_csrf";

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
    let (refresh_c, attrs) = set_cookie(&r, REFRESH);
    assert!(refresh_c.starts_with("pfr1."), "{refresh_c}");
    for a in ["Path=/api/v1/auth", "HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(
            attrs.iter().any(|x| x == a),
            "{REFRESH} lacks {a}: {attrs:?}"
        );
    }
    let (csrf, attrs) = set_cookie(&r, CSRF);
    assert!(!csrf.is_empty());
    assert!(!attrs.iter().any(|x| x == "HttpOnly"), "{attrs:?}");
    // What browsers require of a `__Host-` cookie, or they drop it.
    for a in ["Path=/", "Secure", "SameSite=Strict"] {
        assert!(attrs.iter().any(|x| x == a), "{CSRF} lacks {a}: {attrs:?}");
    }
    for c in r.set_cookies() {
        assert!(!c.to_lowercase().contains("domain="), "{c}");
    }

    let cookies = format!("{REFRESH}={refresh_c}; {CSRF}={csrf}");
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
        ("cookie", format!("{REFRESH}={refresh_c}")),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    problem(&r, 403, "CSRF header without the CSRF cookie");
    // Cookies without their prefix (which a browser would accept from a sibling subdomain or
    // over plain HTTP) are not these cookies.
    let r = cookie_refresh(vec![
        (
            "cookie",
            format!("{REFRESH}={refresh_c}; pifleet_csrf={csrf}"),
        ),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    problem(&r, 403, "unprefixed CSRF cookie");
    let r = cookie_refresh(vec![
        (
            "cookie",
            format!("pifleet_refresh={refresh_c}; {CSRF}={csrf}"),
        ),
        ("x-csrf-token", csrf.clone()),
    ])
    .await;
    unauthorized(&r, "unprefixed refresh cookie");

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
    let (new_refresh, attrs) = set_cookie(&r, REFRESH);
    let (new_csrf, _) = set_cookie(&r, CSRF);
    assert_ne!(new_refresh, refresh_c);
    assert!(attrs.iter().any(|x| x == "HttpOnly"));
    // A browser may also send an empty JSON object: still the cookie.
    let jar = format!("{REFRESH}={new_refresh}; {CSRF}={new_csrf}");
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(&json!({})),
            &[
                ("cookie", jar.as_str()),
                ("x-csrf-token", new_csrf.as_str()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json().get("refresh_token").is_none(), "{}", r.text);
    // The first cookie, presented again, is reuse: 401 and the cookies are cleared.
    let r = cookie_refresh(vec![("cookie", cookies), ("x-csrf-token", csrf)]).await;
    unauthorized(&r, "reused refresh cookie");
    for name in [REFRESH, CSRF] {
        let (cleared, attrs) = set_cookie(&r, name);
        assert_eq!(cleared, "", "{name}");
        assert!(attrs.iter().any(|x| x == "Max-Age=0"), "{name}: {attrs:?}");
        assert!(attrs.iter().any(|x| x == "Secure"), "{name}: {attrs:?}");
    }
}

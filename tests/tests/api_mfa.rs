//! TOTP multi-factor sign-in to the admin API, end to end: enrolment, the two-step login,
//! code replay, single-use step tokens, recovery codes, an admin reset, wrong codes counting
//! toward the lockout (only five of many parallel ones checked), and MFA required for a role.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::future::join_all;
use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::authkit::{
    base32, code, enrol_mfa, now_s, retry_after, send_command, start, unauthorized,
    warm_connections, whoami,
};
use reqwest::Method;
use serde_json::json;

/// A 6-digit code that is valid for none of the steps around `step`.
fn wrong_code(secret: &[u8], step: i64) -> String {
    let valid: Vec<String> = (step - 3..=step + 3).map(|s| code(secret, s)).collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap()
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
    // A step token that is not (or no longer) valid sends the client back to the password
    // step, and says so in a code it can act on.
    let r = login_mfa(&api, &format!("{mfa}x"), "code", "000000").await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.json()["code"], "mfa_expired", "{}", r.text);

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

    // Recovery codes work once each, in any case and grouping (each sign-in with its own
    // step token: a token works once).
    let r = login_mfa(&api, &mfa, "recovery_code", &recovery[0]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mfa = mfa_token(&api, "olga").await;
    unauthorized(
        &login_mfa(&api, &mfa, "recovery_code", &recovery[0]).await,
        "used recovery code",
    );
    let spaced = recovery[1].to_uppercase().replace('-', " ");
    let r = login_mfa(&api, &mfa, "recovery_code", &spaced).await;
    assert_eq!(r.status, 200, "{spaced}: {}", r.text);
    let mfa = mfa_token(&api, "olga").await;
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
    let lockouts = audit(&api, &admin, Some("auth.lockout"), &[]).await;
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

/// The step token works once, enforced in the database: replayed after a successful second
/// step it is refused whatever the code, and of two concurrent uses only one succeeds (the
/// loser's code is not spent). A wrong code does not use it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mfa_step_token_works_once() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let olga = api.user(&admin, "olga", "operator").await.unwrap();
    let (secret, recovery, step) = enrol_mfa(&api, &olga).await;
    let mfa = mfa_token(&api, "olga").await;
    let r = login_mfa(&api, &mfa, "code", &wrong_code(&secret, step)).await;
    unauthorized(&r, "a typo");
    assert_eq!(r.json()["code"], serde_json::Value::Null, "{}", r.text);
    let r = login_mfa(&api, &mfa, "code", &code(&secret, step + 1)).await;
    assert_eq!(r.status, 200, "the same token after a typo: {}", r.text);
    for (field, value) in [
        ("recovery_code", &recovery[0]),
        ("code", &wrong_code(&secret, step)),
    ] {
        let r = login_mfa(&api, &mfa, field, value).await;
        unauthorized(&r, &format!("replayed step token with a {field}"));
        assert_eq!(r.json()["code"], "mfa_expired", "{}", r.text);
    }
    // The replay spent nothing: the recovery code still works with a new token.
    let r = login_mfa(
        &api,
        &mfa_token(&api, "olga").await,
        "recovery_code",
        &recovery[0],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let mfa = mfa_token(&api, "olga").await;
    let both =
        join_all([&recovery[1], &recovery[2]].map(|c| login_mfa(&api, &mfa, "recovery_code", c)))
            .await;
    let mut statuses: Vec<u16> = both.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 401], "one of two concurrent uses");
    let loser = if both[0].status == 401 {
        &recovery[1]
    } else {
        &recovery[2]
    };
    let r = login_mfa(&api, &mfa_token(&api, "olga").await, "recovery_code", loser).await;
    assert_eq!(
        r.status, 200,
        "the losing request's code was not spent: {}",
        r.text
    );
}

/// Twenty wrong codes sent at once: five are checked (and audited), fifteen are refused as
/// locked, and then even the right code is locked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_codes_are_checked_only_up_to_the_limit() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    let petra = api.user(&admin, "petra", "viewer").await.unwrap();
    let (secret, _, step) = enrol_mfa(&api, &petra).await;
    let mfa = mfa_token(&api, "petra").await;
    let wrong = wrong_code(&secret, step);
    warm_connections(&api, 20).await;
    let rs = join_all((0..20).map(|_| login_mfa(&api, &mfa, "code", &wrong))).await;
    for r in &rs {
        match r.status {
            401 => unauthorized(r, "wrong code"),
            423 => {
                problem(r, 423, "locked");
                assert!((1..=900).contains(&retry_after(r)), "{}", r.text);
            }
            _ => panic!("unexpected answer: {} {}", r.status, r.text),
        }
    }
    let n = |status| rs.iter().filter(|r| r.status == status).count();
    assert_eq!((n(401), n(423)), (5, 15));
    let failures = audit(&api, &admin, Some("auth.mfa"), &[])
        .await
        .iter()
        .filter(|e| e["target"] == "petra" && e["outcome"] == "failed: wrong code")
        .count();
    assert_eq!(failures, 5);
    assert_eq!(
        audit(&api, &admin, Some("auth.lockout"), &[]).await.len(),
        1
    );
    problem(
        &login_mfa(&api, &mfa, "code", &code(&secret, step + 1)).await,
        423,
        "the right code after the storm",
    );
}

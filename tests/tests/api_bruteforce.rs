//! Brute-force protection of the admin API, end to end: five failures lock an account
//! (known or unknown, answered alike), wrong current passwords count too, a lock lifts after
//! its window, only five of many parallel guesses are checked, a full argon2 queue answers
//! 503 without counting toward the lockout, and sign-in is rate limited per source (an IPv4
//! address, an IPv6 /64).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::authkit::{refresh, retry_after, start, unauthorized, warm_connections, whoami};
use pifleet_tests::harness::Controller;
use serde_json::json;

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
    let lockouts = audit(&api, &admin, Some("auth.lockout"), &[]).await;
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
        api.login("nobody", "y").await.unwrap(),
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
        &api.post("/api/v1/auth/login/mfa", None, &json!({}))
            .await
            .unwrap(),
        429,
        "the MFA step",
    );
    // Refreshing needs a 256-bit token, nothing to guess: not limited, so dashboards
    // behind one address can reload freely.
    for _ in 0..10 {
        assert_eq!(refresh(&api, "pfr1.nothing").await.status, 401);
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_limit_counts_an_ipv6_64_as_one_source() {
    let ctl = Controller::start_with(
        "[auth]\nrate_per_minute = 1\nrate_burst = 2\n\
         [https]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    let login = |source: &'static str| {
        let api = api.clone();
        async move {
            api.call_with(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(&json!({ "username": "nobody", "password": "x" })),
                &[("x-forwarded-for", source)],
            )
            .await
            .unwrap()
        }
    };
    unauthorized(&login("2001:db8:1:2::1").await, "first of the /64");
    unauthorized(&login("2001:db8:1:2::2").await, "second address, same /64");
    let r = login("2001:db8:1:2:ffff::3").await;
    problem(&r, 429, "third address, same /64");
    assert!(retry_after(&r) >= 1);
    // The next /64 and an IPv4 client are other sources.
    unauthorized(&login("2001:db8:1:3::1").await, "another /64");
    unauthorized(&login("203.0.113.9").await, "an IPv4 client");
    // An IPv4-mapped address is the IPv4 address it carries.
    unauthorized(&login("::ffff:203.0.113.9").await, "the same IPv4 client");
    problem(&login("203.0.113.9").await, 429, "that IPv4 client again");
}

/// `n` sign-ins sent at once (each on its own connection), `password(i)` for the i-th.
async fn logins_at_once(
    api: &Api,
    n: usize,
    user: impl Fn(usize) -> String,
    password: impl Fn(usize) -> String,
) -> Vec<Resp> {
    join_all((0..n).map(|i| {
        let (api, user, password) = (api.clone(), user(i), password(i));
        async move { api.login(&user, &password).await.unwrap() }
    }))
    .await
}

/// How many responses have `status`.
fn count(rs: &[Resp], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

/// Audit entries of `action` for `target` whose outcome is `outcome`.
async fn audited(api: &Api, admin: &str, action: &str, target: &str, outcome: &str) -> usize {
    audit(api, admin, Some(action), &[])
        .await
        .iter()
        .filter(|e| e["target"] == target && e["outcome"] == outcome)
        .count()
}

/// Every guess is recorded before it is checked, so forty wrong passwords sent at once get
/// exactly five checks (five 401s, five audited failures); the rest are refused as locked
/// (or, the few that find the argon2 queue full, with 503 before any of that), and the right
/// password is locked out too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_are_checked_only_up_to_the_limit() {
    let (ctl, api) = start("").await;
    let admin = api.admin(&ctl).await.unwrap();
    api.user(&admin, "olga", "operator").await.unwrap();
    warm_connections(&api, 40).await;
    let rs = logins_at_once(&api, 40, |_| "olga".into(), |i| format!("wrong-{i}")).await;
    for r in &rs {
        match r.status {
            401 => unauthorized(r, "wrong password"),
            423 | 503 => {
                problem(r, r.status, "locked or busy");
                assert!((1..=900).contains(&retry_after(r)), "{}", r.text);
            }
            _ => panic!("unexpected answer: {} {}", r.status, r.text),
        }
    }
    assert_eq!(count(&rs, 401), 5);
    assert_eq!(count(&rs, 423) + count(&rs, 503), 35);
    assert_eq!(
        audited(&api, &admin, "auth.login", "olga", "failed: wrong password").await,
        5
    );
    assert_eq!(
        audited(&api, &admin, "auth.lockout", "olga", "locked").await,
        1
    );
    problem(
        &api.login("olga", TEST_PASSWORD).await.unwrap(),
        423,
        "right password after the storm",
    );
}

/// With one argon2 run at a time and one request waiting, most of ten parallel sign-ins are
/// refused with 503 and Retry-After, counted in a metric, and none of those refusals counts
/// toward the lockout (one failure locks here, so a counted one would show as 423).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_argon2_queue_answers_503_without_counting_a_failure() {
    let (ctl, api) = start(
        "lockout_failures = 1\nargon2_concurrency = 1\nargon2_queue = 1\n\
         argon2_memory_kib = 65536\nargon2_iterations = 8",
    )
    .await;
    let admin = api.admin(&ctl).await.unwrap();
    let name = |i: usize| format!("ghost-{i}");
    warm_connections(&api, 10).await;
    let rs = logins_at_once(&api, 10, name, |i| format!("guess-{i}")).await;
    let mut busy = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        match r.status {
            401 => unauthorized(r, "unknown user"),
            503 => {
                problem(r, 503, "argon2 queue full");
                assert!(retry_after(r) >= 1, "{}", r.header("retry-after"));
                busy.push(i);
            }
            _ => panic!("unexpected answer: {} {}", r.status, r.text),
        }
    }
    assert!(
        !busy.is_empty(),
        "no 503 among {:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(busy.len() < 10, "every sign-in was refused");
    for (i, r) in rs.iter().enumerate() {
        let failures = audited(&api, &admin, "auth.login", &name(i), "failed: unknown user").await;
        assert_eq!(failures, usize::from(r.status == 401), "{}", name(i));
    }
    for (i, r) in rs.iter().enumerate() {
        let again = api.login(&name(i), "guess-again").await.unwrap();
        if r.status == 503 {
            unauthorized(&again, "after a 503: not locked, the guess is checked");
        } else {
            problem(&again, 423, "after a 401: locked");
        }
    }
    let scrape = std::fs::read_to_string(ctl.data.join("scrape.token")).unwrap();
    let metrics = api.get("/metrics", Some(scrape.trim())).await.unwrap();
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l == format!("pifleet_auth_busy_total {}", busy.len())),
        "{}",
        metrics.text
    );
}

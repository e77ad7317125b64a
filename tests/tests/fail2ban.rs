//! The fail2ban filters in deploy/fail2ban/ against what the real controller logs: every
//! kind of failed sign-in (wrong password, unknown user, wrong MFA code, locked account) and
//! of refused enrollment token (malformed, unknown, used, expired, revoked) is matched with
//! the client's address, and no success is. Clients other than loopback come through
//! `X-Forwarded-For` from a trusted proxy (loopback), as behind a reverse proxy. The lines
//! are checked as the log file holds them and as the jail reads them from the journal.
//! Needs `fail2ban-regex` (Debian package fail2ban).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::authkit::{code, enrol_mfa, now_s};
use pifleet_tests::harness::{Agent, Controller, now_ms, wait_for};
use pifleet_tests::https::csr_pem;
use pifleet_tests::logs::{REFUSED, count_entries, wait_entry};
use pifleet_tests::mqtt::{client, client_tls, connack, connected};
use reqwest::Method;
use serde_json::{Value, json};

const CONFIG: &str = "[https]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                      [auth]\nrate_per_minute = 100000\nrate_burst = 100000\n\
                      lockout_failures = 3\n\
                      [enrollment]\nrate_per_minute = 100000\nrate_burst = 100000\n";

fn filter(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/fail2ban/filter.d")
        .join(format!("{name}.conf"))
}

/// A request from `source` through the trusted proxy.
async fn from(api: &Api, source: &str, path: &str, body: &Value) -> Resp {
    api.call_with(
        Method::POST,
        path,
        None,
        Some(body),
        &[("x-forwarded-for", source)],
    )
    .await
    .unwrap()
}

async fn login(api: &Api, source: &str, user: &str, password: &str) -> Resp {
    let body = json!({ "username": user, "password": password });
    from(api, source, "/api/v1/auth/login", &body).await
}

async fn enroll(api: &Api, source: &str, token: &str, csr: &str) -> Resp {
    let body = json!({ "token": token, "csr": csr });
    from(api, source, "/api/v1/enroll", &body).await
}

fn status(r: &Resp, want: u16, what: &str) {
    assert_eq!(r.status, want, "{what}: {}", r.text);
}

/// The id of the enrollment token created with `--name name` (`token list`).
fn token_id(ctl: &Controller, name: &str) -> String {
    let out = ctl.cli(&["token", "list"]).unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| match l.split('\t').collect::<Vec<_>>()[..] {
            [id, n, _] if n == name => Some(id.to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no token {name} in:\n{text}"))
}

/// What `fail2ban-regex` makes of `lines` with filter `name`: the addresses it would count
/// a failure against (one per matched line), and the matched lines.
fn fail2ban(dir: &Path, lines: &[String], name: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    let log = dir.join(format!("{name}-{}.log", lines.len()));
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new("fail2ban-regex")
            .args(extra)
            .arg(&log)
            .arg(filter(name))
            .output()
            .unwrap_or_else(|e| panic!("fail2ban-regex (Debian package fail2ban) cannot run: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "fail2ban-regex: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let mut ips = BTreeMap::new();
    for ip in run(&["--raw", "--out", "ip"]).lines() {
        *ips.entry(ip.trim().to_owned()).or_insert(0) += 1;
    }
    // `--print-all-matched`: the summary, then each matched line after `|  `.
    let report = run(&["--raw", "--print-all-matched"]);
    let matched: Vec<String> = report
        .split("|- Matched line(s):")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map_while(|l| l.strip_prefix("|  "))
        .map(|l| l.trim().to_owned())
        .collect();
    let total: usize = ips.values().sum();
    assert!(
        report.contains(&format!(" {total} matched,")),
        "the summary disagrees with {ips:?}:\n{report}"
    );
    assert_eq!(matched.len(), total, "{report}");
    (ips, matched)
}

/// The controller's JSON lines, and the same as the jail reads them from the journal
/// (`backend = systemd` hands the filter `HOST IDENTIFIER[PID]: MESSAGE`).
fn log_lines(ctl: &Controller) -> (Vec<String>, Vec<String>) {
    let json: Vec<String> = ctl
        .log()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .map(str::to_owned)
        .collect();
    let journal = json
        .iter()
        .map(|l| format!("fleet-ctl pifleet-controller[4242]: {l}"))
        .collect();
    (json, journal)
}

fn expect(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(ip, n)| ((*ip).to_owned(), *n)).collect()
}

/// Whether a log line is an event with this message from `source`.
fn logged(lines: &[String], message: &str, source: &str) -> bool {
    lines.iter().any(|l| {
        let e: Value = serde_json::from_str(l).unwrap_or_default();
        e["message"] == message && e["source"] == source
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filters_match_failures_with_the_client_address_and_no_success() {
    let ctl = Controller::start_with(CONFIG).await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let mfa_token = api.user(&admin, "mira", "viewer").await.unwrap();
    let (secret, _, step) = enrol_mfa(&api, &mfa_token).await;
    api.user(&admin, "lena", "viewer").await.unwrap();

    // Successful sign-ins: a password, and a password then a TOTP code.
    status(
        &login(&api, "198.51.100.1", "admin", TEST_PASSWORD).await,
        200,
        "admin",
    );
    let first = login(&api, "198.51.100.2", "mira", TEST_PASSWORD).await;
    status(&first, 200, "mira's password");
    let step_token = first.json()["mfa_token"].as_str().unwrap().to_owned();
    let totp = code(&secret, (now_s() / 30).max(step + 1));
    let body = json!({ "mfa_token": step_token, "code": totp });
    status(
        &from(&api, "198.51.100.2", "/api/v1/auth/login/mfa", &body).await,
        200,
        "mira's code",
    );

    // Failed sign-ins, each kind from its own address.
    status(
        &login(&api, "192.0.2.11", "admin", "not-the-password-1").await,
        401,
        "wrong password",
    );
    status(
        &login(&api, "192.0.2.12", "nobody", "not-the-password-2").await,
        401,
        "unknown user",
    );
    let first = login(&api, "198.51.100.3", "mira", TEST_PASSWORD).await;
    status(&first, 200, "mira's password again");
    let step_token = first.json()["mfa_token"].as_str().unwrap().to_owned();
    // A code of a step long past: refused whatever the clock says.
    let body = json!({ "mfa_token": step_token, "code": code(&secret, step - 1000) });
    status(
        &from(&api, "2001:db8::13", "/api/v1/auth/login/mfa", &body).await,
        401,
        "wrong MFA code",
    );
    for i in 0..3 {
        status(
            &login(&api, "192.0.2.14", "lena", &format!("guess-{i}")).await,
            401,
            "a guess for lena",
        );
    }
    status(
        &login(&api, "192.0.2.15", "lena", TEST_PASSWORD).await,
        423,
        "locked account",
    );

    // A successful enrollment, then refused tokens, each kind from its own address.
    let used = ctl.token(None, "10m").unwrap();
    status(
        &enroll(&api, "198.51.100.4", &used, &csr_pem("pi-good")).await,
        200,
        "enrollment",
    );
    let csr = csr_pem("pi-refused");
    status(
        &enroll(&api, "192.0.2.21", "garbage", &csr).await,
        400,
        "malformed token",
    );
    let fingerprint = used.rsplit('.').next().unwrap();
    let unknown = format!(
        "pft1.{}.{fingerprint}",
        hex::encode(rand::random::<[u8; 32]>())
    );
    let r = enroll(&api, "192.0.2.22", &unknown, &csr).await;
    assert!(
        r.status >= 400 && r.status < 500,
        "unknown token: {}",
        r.text
    );
    let r = enroll(&api, "192.0.2.23", &used, &csr).await;
    assert!(r.status >= 400 && r.status < 500, "used token: {}", r.text);
    let revoked = ctl.token(Some("pi-rvk"), "10m").unwrap();
    let id = token_id(&ctl, "pi-rvk");
    assert!(ctl.cli(&["token", "revoke", &id]).unwrap().status.success());
    let r = enroll(&api, "2001:db8::25", &revoked, &csr).await;
    assert!(
        r.status >= 400 && r.status < 500,
        "revoked token: {}",
        r.text
    );
    let expiring = ctl.token(None, "1s").unwrap();
    let until = now_ms() + 1100;
    wait_for(Duration::from_secs(5), "token expiry", || async {
        (now_ms() > until).then_some(())
    })
    .await
    .unwrap();
    let r = enroll(&api, "192.0.2.24", &expiring, &csr).await;
    assert!(
        r.status >= 400 && r.status < 500,
        "expired token: {}",
        r.text
    );
    // A good token with a CSR that is not acceptable: the device's fault, not a guess.
    let fresh = ctl.token(None, "10m").unwrap();
    status(
        &enroll(&api, "203.0.113.30", &fresh, "not a CSR").await,
        400,
        "bad CSR",
    );

    // MQTT: two handshakes without a client certificate, and a device that connects.
    let pi = Agent::enroll(&ctl, "pi-mqtt", 60).unwrap();
    for _ in 0..2 {
        let before = count_entries(&ctl, REFUSED, "tls", None);
        let (_c, mut ev) = client(
            ctl.mqtt.port(),
            "pi-mqtt",
            client_tls(&ctl.ca_path(), None).unwrap(),
        );
        connack(&mut ev)
            .await
            .expect_err("connected without a client certificate");
        wait_entry(&ctl, before, REFUSED, "tls", None)
            .await
            .unwrap();
    }
    let _session = connected(&ctl, &pi).await.unwrap();

    // Every kind above reached the log, successes included, before the filters judge it.
    let (json, journal) = log_lines(&ctl);
    for (message, source) in [
        ("sign-in failed", "192.0.2.11"),
        ("sign-in failed", "192.0.2.15"),
        ("sign-in failed", "2001:db8::13"),
        ("enrollment refused", "192.0.2.24"),
        ("enrollment refused", "203.0.113.30"),
        ("device enrolled", "198.51.100.4"),
    ] {
        assert!(
            logged(&json, message, source),
            "no {message:?} from {source}:\n{}",
            ctl.log()
        );
    }
    let requests = json
        .iter()
        .filter(|l| l.contains("\"message\":\"request done\""))
        .count();
    assert!(requests >= 20, "{}", ctl.log());

    let dir = tempfile::tempdir().unwrap();
    let admin_failures = expect(&[
        ("192.0.2.11", 1),
        ("192.0.2.12", 1),
        ("2001:db8::13", 1),
        ("192.0.2.14", 3),
        ("192.0.2.15", 1),
        ("192.0.2.21", 1),
        ("192.0.2.22", 1),
        ("192.0.2.23", 1),
        ("192.0.2.24", 1),
        ("2001:db8::25", 1),
    ]);
    let mqtt_failures = expect(&[("127.0.0.1", 2)]);
    for (lines, form) in [(&json, "log file"), (&journal, "journal")] {
        let (ips, matched) = fail2ban(dir.path(), lines, "pifleet");
        assert_eq!(ips, admin_failures, "pifleet, {form}:\n{matched:#?}");
        for l in &matched {
            assert!(
                l.contains("\"message\":\"sign-in failed\"")
                    || l.contains("\"message\":\"enrollment refused\""),
                "pifleet, {form}, matched: {l}"
            );
        }
        let (ips, matched) = fail2ban(dir.path(), lines, "pifleet-mqtt");
        assert_eq!(ips, mqtt_failures, "pifleet-mqtt, {form}:\n{matched:#?}");
        for l in &matched {
            assert!(
                l.contains("\"message\":\"mqtt connection refused\""),
                "pifleet-mqtt, {form}, matched: {l}"
            );
        }
    }
}

/// Values a client chooses (a path, a refusal's detail) are JSON strings, whose quotes are
/// escaped: text in them that looks like a field never makes a line match, or names the
/// address a failure is counted against.
#[test]
fn values_cannot_forge_fields() {
    let line = |fields: &str| {
        format!(
            "{{\"timestamp\":\"2026-12-06T10:00:00.000001Z\",\"level\":\"WARN\",{fields},\"target\":\"pifleet_controller::api\"}}"
        )
    };
    let forged = [
        line(
            r#""message":"request done","status":401,"span":{"path":"/x\",\"message\":\"sign-in failed\",\"source\":\"192.0.2.66\""}"#,
        ),
        line(
            r#""message":"enrollment refused","source":"192.0.2.67","status":400,"reason":"CSR refused","detail":"\"reason\":\"unknown enrollment token\""#,
        ),
        line(
            r#""message":"mqtt connection refused","peer":"192.0.2.68:4000","source":"192.0.2.68","reason":"protocol","detail":"\"reason\":\"tls\""#,
        ),
    ];
    let real = [
        line(
            r#""message":"sign-in failed","source":"192.0.2.70","action":"auth.login","reason":"wrong password","span":{"path":"/\"source\":\"192.0.2.66\""}"#,
        ),
        line(
            r#""message":"mqtt connection refused","peer":"[2001:db8::71]:4000","source":"2001:db8::71","reason":"no_client_cert","detail":"\"source\":\"192.0.2.66\""#,
        ),
    ];
    let lines: Vec<String> = forged.iter().chain(&real).cloned().collect();
    let dir = tempfile::tempdir().unwrap();
    let (ips, _) = fail2ban(dir.path(), &lines, "pifleet");
    assert_eq!(ips, expect(&[("192.0.2.70", 1)]));
    let (ips, _) = fail2ban(dir.path(), &lines, "pifleet-mqtt");
    assert_eq!(ips, expect(&[("2001:db8::71", 1)]));
}

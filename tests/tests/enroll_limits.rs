//! What unauthenticated enrollment requests may cost: each source (an IPv4 address, an IPv6
//! /64) gets a rate (429 past it), and refusals are logged one line each with their source
//! but audited as counts, one entry per source and interval, written by a periodic flush
//! and at shutdown — while a successful enrollment is audited at once. Sources other than
//! loopback come through `X-Forwarded-For` from a trusted proxy (loopback).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use pifleet_tests::api::{Api, Resp};
use pifleet_tests::apikit::problem;
use pifleet_tests::authkit::retry_after;
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::https::csr_pem;
use pifleet_tests::promkit::value;
use reqwest::Method;
use serde_json::{Value, json};

const PROXIED: &str = "[https]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
                       [metrics]\nscrape_allow = [\"127.0.0.1/32\"]\n";

/// POST /api/v1/enroll with `body`, from `source` (through the trusted proxy) or straight
/// from loopback.
async fn enroll(api: &Api, body: &Value, source: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = source.map(|s| ("x-forwarded-for", s)).into_iter().collect();
    api.call_with(Method::POST, "/api/v1/enroll", None, Some(body), &headers)
        .await
        .unwrap()
}

/// A token in the right format with this controller's CA fingerprint and a secret nobody
/// issued.
fn unknown_token(ctl: &Controller) -> String {
    let real = ctl.token(None, "10m").unwrap();
    let fingerprint = real.rsplit('.').next().unwrap();
    format!(
        "pft1.{}.{fingerprint}",
        hex::encode(rand::random::<[u8; 32]>())
    )
}

/// The refused `device.enroll` audit entries: (source, outcome, detail), in order.
async fn refusal_entries(ctl: &Controller) -> Vec<(String, String, String)> {
    let db = ctl.db().await.unwrap();
    let rows = sqlx::query_as(
        "SELECT source, outcome, detail FROM audit_log \
         WHERE action = 'device.enroll' AND outcome <> 'ok' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows
}

/// Counts per reason in an aggregated entry's detail, checked against its total:
/// `N refused attempt(s) (reason ×n, …) between <t1> and <t2>`.
fn counts(detail: &str) -> BTreeMap<String, u64> {
    let (total, rest) = detail.split_once(" refused attempt").unwrap();
    let total: u64 = total.parse().unwrap();
    let inner = rest.split_once('(').unwrap().1;
    let (inner, span) = inner.split_once(") between ").unwrap();
    assert!(span.contains(" and "), "{detail}");
    let mut m = BTreeMap::new();
    for part in inner.split(", ") {
        let (reason, n) = part.rsplit_once(" ×").unwrap();
        *m.entry(reason.to_owned()).or_insert(0) += n.parse::<u64>().unwrap();
    }
    assert_eq!(m.values().sum::<u64>(), total, "{detail}");
    m
}

/// Counts per source and reason over every aggregated entry so far.
async fn audited(ctl: &Controller) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut all: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (source, outcome, detail) in refusal_entries(ctl).await {
        assert_eq!(outcome, "refused", "{source}: {detail}");
        for (reason, n) in counts(&detail) {
            *all.entry(source.clone())
                .or_default()
                .entry(reason)
                .or_insert(0) += n;
        }
    }
    all
}

fn expect(pairs: &[(&str, &[(&str, u64)])]) -> BTreeMap<String, BTreeMap<String, u64>> {
    pairs
        .iter()
        .map(|(s, rs)| {
            (
                (*s).to_owned(),
                rs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            )
        })
        .collect()
}

/// The controller's "enrollment refused" log lines by `source`.
fn logged_refusals(ctl: &Controller) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in ctl.log().lines() {
        let Ok(e) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if e["message"] == "enrollment refused" {
            let source = e["source"].as_str().unwrap_or("(none)").to_owned();
            *m.entry(source).or_insert(0) += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_rate_limited_per_source() {
    let ctl = Controller::start_with(&format!(
        "{PROXIED}[enrollment]\nrate_per_minute = 1\nrate_burst = 3\n"
    ))
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    let body = json!({ "token": "garbage", "csr": "x" });

    // Straight from loopback: the burst, then 429 with a Retry-After.
    for i in 0..3 {
        let r = enroll(&api, &body, None).await;
        problem(&r, 400, &format!("request {i} within the burst"));
    }
    let r = enroll(&api, &body, None).await;
    let doc = problem(&r, 429, "past the burst");
    assert!(
        doc["detail"].as_str().unwrap().contains("enrollment"),
        "{doc}"
    );
    assert!(retry_after(&r) >= 1);

    // Another source has its own rate; the addresses of one IPv6 /64 share one.
    for i in 0..3 {
        let r = enroll(&api, &body, Some(&format!("2001:db8:1:2::{}", i + 1))).await;
        problem(&r, 400, &format!("/64 request {i}"));
    }
    let r = enroll(&api, &body, Some("2001:db8:1:2:ffff::9")).await;
    problem(&r, 429, "another address of the same /64");
    let r = enroll(&api, &body, Some("2001:db8:1:3::1")).await;
    problem(&r, 400, "the next /64");
    let r = enroll(&api, &body, Some("203.0.113.9")).await;
    problem(&r, 400, "another IPv4 address");

    // Only what was not throttled reached the handler (and its log line).
    let logged = logged_refusals(&ctl);
    assert_eq!(logged.values().sum::<usize>(), 8, "{logged:?}");
    let r = api.get("/metrics", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        value(
            &r.text,
            "pifleet_enrollments_total{outcome=\"rate_limited\"}"
        ),
        Some(2.0),
        "{}",
        r.text
    );
    assert_eq!(
        value(&r.text, "pifleet_enrollments_total{outcome=\"refused\"}"),
        Some(8.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_enrollments_are_audited_as_counts_per_source() {
    let ctl = Controller::start_with(&format!(
        "{PROXIED}[enrollment]\nrate_per_minute = 100000\nrate_burst = 100000\n\
         refusal_audit_interval_s = 1\n"
    ))
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    let unknown = json!({ "token": unknown_token(&ctl), "csr": csr_pem("pi-x") });
    let bad_csr = json!({ "token": unknown_token(&ctl), "csr": "not a CSR" });
    let malformed = json!({ "token": "garbage", "csr": "x" });

    for _ in 0..25 {
        problem(&enroll(&api, &malformed, None).await, 400, "malformed");
    }
    for _ in 0..15 {
        problem(&enroll(&api, &bad_csr, None).await, 400, "bad CSR");
    }
    for i in 0..10 {
        let source = format!("2001:db8:7:7::{}", i + 1);
        problem(&enroll(&api, &unknown, Some(&source)).await, 403, "unknown");
    }
    let want = expect(&[
        ("127.0.0.1", &[("malformed token", 25), ("CSR refused", 15)]),
        ("2001:db8:7:7::/64", &[("unknown enrollment token", 10)]),
    ]);
    let flushed = wait_for(
        Duration::from_secs(15),
        "aggregated refusal entries",
        || async { (audited(&ctl).await == want).then_some(()) },
    )
    .await;
    if let Err(e) = flushed {
        panic!("{e}: {:#?}", refusal_entries(&ctl).await);
    }
    // Counted, not one entry per attempt: the requests spanned at most a few flushes.
    let entries = refusal_entries(&ctl).await;
    assert!(entries.len() <= 8, "{entries:#?}");
    // The log still has one line per refusal, with the client's own address.
    let logged = logged_refusals(&ctl);
    assert_eq!(logged.get("127.0.0.1"), Some(&40), "{logged:?}");
    let v6: usize = logged
        .iter()
        .filter(|(s, _)| s.starts_with("2001:db8:7:7::"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(v6, 10, "{logged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_flushed_at_shutdown_and_successes_audited_at_once() {
    let mut ctl = Controller::start_with(&format!(
        "{PROXIED}[enrollment]\nrefusal_audit_interval_s = 3600\n"
    ))
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    let unknown = json!({ "token": unknown_token(&ctl), "csr": csr_pem("pi-x") });
    for _ in 0..5 {
        problem(
            &enroll(&api, &unknown, Some("198.51.100.7")).await,
            403,
            "unknown",
        );
    }
    // A real agent enrolls: its entry is there at once; the refusals wait for the flush.
    let _agent = Agent::enroll(&ctl, "pi-ok", 5).unwrap();
    let db = ctl.db().await.unwrap();
    let ok: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, source FROM audit_log WHERE action = 'device.enroll' AND outcome = 'ok'",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(ok, [("device:pi-ok".to_owned(), "127.0.0.1".to_owned())]);
    assert!(refusal_entries(&ctl).await.is_empty());

    assert_eq!(ctl.stop().map(|s| s.success()), Some(true), "{}", ctl.log());
    assert_eq!(
        audited(&ctl).await,
        expect(&[("198.51.100.7", &[("unknown enrollment token", 5)])])
    );
    // The entries written in one batch keep the chain intact.
    let out = ctl.cli(&["audit", "verify"]).unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Guessed tokens cost no write lock: while another process holds the database's write
/// lock (longer than the controller waits for it), an unknown token is still refused as
/// unknown, not failed as a locked database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_are_refused_without_the_write_lock() {
    let ctl = Controller::start_with("[store]\nbusy_timeout_ms = 300")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let body = json!({ "token": unknown_token(&ctl), "csr": csr_pem("pi-guess") });
    let lock = ctl.hold_write_lock().await.unwrap();
    let r = enroll(&api, &body, None).await;
    problem(&r, 403, "unknown token while the database is locked");
    assert!(r.text.contains("unknown enrollment token"), "{}", r.text);
    lock.release().await.unwrap();
}

/// A site enrolling more devices at once than its burst allows: the `pifleet-agent enroll`
/// runs turned away with 429 wait out the Retry-After and get through, each with its
/// single-use token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_turned_away_by_the_rate_limit_enroll_after_waiting() {
    let ctl = Controller::start_with(&format!(
        "{PROXIED}[enrollment]\nrate_per_minute = 60\nrate_burst = 1"
    ))
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..3)
        .map(|i| {
            let token = ctl.token(None, "10m").unwrap();
            std::process::Command::new(pifleet_tests::harness::bin("pifleet-agent").unwrap())
                .args(["enroll", "--controller", &ctl.url(), "--token", &token])
                .arg("--config")
                .arg(dir.path().join(format!("pi-site-{i}")).join("agent.toml"))
                .args(["--device-id", &format!("pi-site-{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let db = ctl.db().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE id LIKE 'pi-site-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(n, 3);
    // They really were turned away first.
    let metrics = api.get("/metrics", None).await.unwrap().text;
    let limited = value(
        &metrics,
        "pifleet_enrollments_total{outcome=\"rate_limited\"}",
    );
    assert!(limited.is_some_and(|n| n >= 1.0), "{metrics}");
}

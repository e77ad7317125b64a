//! The fleet through the admin API, with real agents (telemetry every second): the device
//! list with its filters, sort and paging, device detail, latest telemetry and history
//! checked against the telemetry table, labels, revocation; remote commands (send by id and
//! by selector, list, cancel); and enrollment tokens that a real `pifleet-agent enroll`
//! accepts or is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use pifleet_tests::api::{Api, Resp};
use pifleet_tests::harness::{Controller, bin, signal, wait_for};
use pifleet_tests::logs::{
    DISCONNECTED, REFUSED, count_entries, is_entry, log_entries, wait_entry,
};
use pifleet_tests::mqtt::{client, client_tls, connack};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use tempfile::TempDir;

/// How long agents get to connect, report and answer.
const WAIT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A real agent enrolled with a token the test chose (the harness's `Agent::enroll` always
/// makes its own token, without labels).
struct Pi {
    id: String,
    dir: PathBuf,
    _tmp: TempDir,
    child: Option<Child>,
    starts: u32,
}

/// `pifleet-agent enroll` with `args` (after `enroll`) into `dir`, telemetry every second,
/// proposing `id` when given.
fn agent_enroll(args: &[&str], dir: &std::path::Path, id: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("pifleet-agent").unwrap());
    cmd.arg("enroll")
        .args(args)
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args(["--interval", "1"]);
    if let Some(id) = id {
        cmd.args(["--device-id", id]);
    }
    cmd.output().unwrap()
}

impl Pi {
    /// Enrolls as `id` with `token`; fails the test if the controller refuses.
    fn enroll(ctl: &Controller, id: &str, token: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(id);
        let out = agent_enroll(
            &["--controller", &ctl.url(), "--token", token],
            &dir,
            Some(id),
        );
        assert!(
            out.status.success(),
            "enroll {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            id: id.to_owned(),
            dir,
            _tmp: tmp,
            child: None,
            starts: 0,
        }
    }

    fn start(&mut self) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("agent-{}.log", self.starts))).unwrap();
        let child = Command::new(bin("pifleet-agent").unwrap())
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGTERM and wait.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("agent-{n}.log"))).unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Pi {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a JSON number is the stored float `db`. serde_json (without its
/// `float_roundtrip` feature) may parse a number one ULP away from the value that was
/// printed, so equality is up to a relative 1e-12.
fn same(json: &Value, db: Option<f64>) -> bool {
    match (json.as_f64(), db) {
        (Some(j), Some(d)) => (j - d).abs() <= 1e-12 * d.abs().max(1.0),
        (None, None) => json.is_null(),
        _ => false,
    }
}

/// Checks a problem document's status and media type.
fn problem(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "{what}"
    );
    assert_eq!(r.json()["status"], status, "{what}");
}

/// Checks the status; the body as JSON.
fn ok(r: Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    r.json()
}

/// A GET that must answer 200: its JSON.
async fn get(api: &Api, token: &str, path: &str) -> Value {
    ok(api.get(path, Some(token)).await.unwrap(), 200, path)
}

/// The ids of a device page, with its total.
async fn page(api: &Api, token: &str, query: &str) -> (i64, Vec<String>) {
    let j = get(api, token, &format!("/api/v1/devices{query}")).await;
    let ids = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    (j["total"].as_i64().unwrap(), ids)
}

/// `POST /api/v1/tokens` with `body`: the created token.
async fn api_token(api: &Api, admin: &str, body: Value) -> Value {
    ok(
        api.post("/api/v1/tokens", Some(admin), &body)
            .await
            .unwrap(),
        201,
        "create token",
    )
}

/// pi-1 (site=lobby, tier=a; token from the CLI), pi-2 (site=lobby) and pi-3 (site=lab)
/// (tokens from the API), started, online and reporting.
async fn fleet(ctl: &Controller, api: &Api, admin: &str) -> Vec<Pi> {
    let out = ctl
        .cli(&[
            "token",
            "create",
            "--ttl",
            "10m",
            "--label",
            "site=lobby",
            "--label",
            "tier=a",
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t1 = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let t2 = api_token(api, admin, json!({ "labels": { "site": "lobby" } })).await;
    let t3 = api_token(api, admin, json!({ "labels": { "site": "lab" } })).await;
    let mut pis = vec![
        Pi::enroll(ctl, "pi-1", &t1),
        Pi::enroll(ctl, "pi-2", t2["token"].as_str().unwrap()),
        Pi::enroll(ctl, "pi-3", t3["token"].as_str().unwrap()),
    ];
    for p in &mut pis {
        p.start();
    }
    let all_reporting = wait_for(WAIT, "three devices online with samples", || async {
        let j = api.get("/api/v1/devices", Some(admin)).await.ok()?.json();
        let items = j["items"].as_array()?.clone();
        (items.len() == 3
            && items
                .iter()
                .all(|d| d["status"] == "online" && d["cpu_pct"].is_number()))
        .then_some(())
    })
    .await;
    if let Err(e) = all_reporting {
        let logs: Vec<String> = pis
            .iter()
            .map(|p| format!("{}:\n{}", p.id, p.log()))
            .collect();
        panic!("{e}\n{}\ncontroller:\n{}", logs.join("\n"), ctl.log());
    }
    pis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_filtered_sorted_paged_and_managed() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let mut pis = fleet(&ctl, &api, &admin).await;
    let db = ctl.db().await.unwrap();

    // The list: every device with its labels and latest sample.
    let j = get(&api, &admin, "/api/v1/devices").await;
    assert_eq!(j["total"], 3);
    let items = j["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pi-1", "pi-2", "pi-3"]);
    let labels = [
        json!({ "site": "lobby", "tier": "a" }),
        json!({ "site": "lobby" }),
        json!({ "site": "lab" }),
    ];
    for (d, want) in items.iter().zip(&labels) {
        assert_eq!(&d["labels"], want, "{d}");
        assert_eq!(d["status"], "online", "{d}");
        let cpu = d["cpu_pct"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{d}");
        let (used, total) = (
            d["mem_used"].as_i64().unwrap(),
            d["mem_total"].as_i64().unwrap(),
        );
        assert!(total > 0 && (0..=total).contains(&used), "{d}");
        assert!(
            d["hostname"].is_string() && d["agent_version"].is_string(),
            "{d}"
        );
        assert!(d["last_seen"].as_i64().unwrap() >= d["enrolled_at"].as_i64().unwrap());
        // The values are those of a stored sample of this device.
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM telemetry WHERE device_id = ? \
             AND abs(cpu_pct - ?) <= 1e-12 * max(abs(cpu_pct), 1.0) \
             AND mem_used = ? AND mem_total = ? AND uptime_s = ?",
        )
        .bind(d["id"].as_str().unwrap())
        .bind(cpu)
        .bind(used)
        .bind(total)
        .bind(d["uptime_s"].as_i64().unwrap())
        .fetch_one(&db)
        .await
        .unwrap();
        assert!(n >= 1, "{d}");
    }
    let hostname = items[0]["hostname"].as_str().unwrap().to_owned();

    // Filters.
    let cases: Vec<(String, i64, Vec<&str>)> = vec![
        ("?status=online".into(), 3, vec!["pi-1", "pi-2", "pi-3"]),
        ("?status=offline".into(), 0, vec![]),
        ("?status=revoked".into(), 0, vec![]),
        ("?label=site=lobby".into(), 2, vec!["pi-1", "pi-2"]),
        ("?label=site=lobby,tier=a".into(), 1, vec!["pi-1"]),
        ("?label=tier=a,site=lab".into(), 0, vec![]),
        ("?label=site=nowhere".into(), 0, vec![]),
        ("?q=PI-3".into(), 1, vec!["pi-3"]),
        ("?q=pi-".into(), 3, vec!["pi-1", "pi-2", "pi-3"]),
        ("?q=no-such-device".into(), 0, vec![]),
        (
            format!("?q={}", hostname.to_uppercase()),
            3,
            vec!["pi-1", "pi-2", "pi-3"],
        ),
        ("?status=online&label=site=lab".into(), 1, vec!["pi-3"]),
        // Sort and page.
        (
            "?sort=id&order=desc".into(),
            3,
            vec!["pi-3", "pi-2", "pi-1"],
        ),
        ("?limit=1&offset=1".into(), 3, vec!["pi-2"]),
        (
            "?sort=id&order=desc&limit=2".into(),
            3,
            vec!["pi-3", "pi-2"],
        ),
        ("?limit=2&offset=2".into(), 3, vec!["pi-3"]),
        ("?offset=10".into(), 3, vec![]),
        ("?label=site=lobby&limit=1&offset=1".into(), 2, vec!["pi-2"]),
    ];
    for (query, total, want) in cases {
        let (t, ids) = page(&api, &admin, &query).await;
        assert_eq!(
            (t, ids),
            (total, want.iter().map(|s| s.to_string()).collect()),
            "{query}"
        );
    }
    // Sorting by a telemetry value orders the page by it.
    for (sort, order) in [("cpu", "desc"), ("cpu", "asc"), ("memory", "desc")] {
        let j = get(
            &api,
            &admin,
            &format!("/api/v1/devices?sort={sort}&order={order}"),
        )
        .await;
        let keys: Vec<f64> = j["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| match sort {
                "cpu" => d["cpu_pct"].as_f64().unwrap(),
                _ => d["mem_used"].as_f64().unwrap() / d["mem_total"].as_f64().unwrap(),
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if order == "desc" {
            sorted.reverse();
        }
        assert_eq!(keys, sorted, "sort={sort}&order={order}");
    }
    // Bad query values are 400 problems, never ignored.
    let long_q = format!("?q={}", "x".repeat(256));
    for query in [
        "?status=asleep",
        "?sort=colour",
        "?order=up",
        "?limit=0",
        "?limit=501",
        "?limit=ten",
        "?offset=-1",
        "?label=Site=lobby",
        "?label=site",
        "?label=site=a,site=b",
        long_q.as_str(),
    ] {
        let r = api
            .get(&format!("/api/v1/devices{query}"), Some(&admin))
            .await
            .unwrap();
        problem(&r, 400, query);
    }

    // Detail.
    let d = get(&api, &admin, "/api/v1/devices/pi-1").await;
    assert_eq!(d["id"], "pi-1");
    assert_eq!(d["labels"], labels[0]);
    assert_eq!(d["status"], "online");
    assert_eq!(d["revoked_at"], Value::Null);
    assert!(
        d["os"].is_string() && d["kernel"].is_string() && d["arch"].is_string(),
        "{d}"
    );
    assert!(d["hello_at"].is_i64() && d["first_seen"].is_i64(), "{d}");
    let certs = d["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{d}");
    assert_eq!(certs[0]["revoked_at"], Value::Null);
    assert!(
        certs[0]["not_after"].as_i64().unwrap() > certs[0]["issued_at"].as_i64().unwrap(),
        "{d}"
    );
    let serial: String =
        sqlx::query_scalar("SELECT serial FROM certificates WHERE device_id = 'pi-1'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(certs[0]["serial"], serial);
    // Its latest values are those of the sample at `last_seq` (one query, one snapshot).
    let last_seq = d["last_seq"].as_i64().unwrap();
    let r = sqlx::query(
        "SELECT cpu_pct, mem_used, mem_total FROM telemetry WHERE device_id = 'pi-1' AND seq = ?",
    )
    .bind(last_seq)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(same(&d["cpu_pct"], Some(r.get("cpu_pct"))), "{d}");
    assert_eq!(d["mem_used"].as_i64(), Some(r.get::<i64, _>("mem_used")));
    assert_eq!(d["mem_total"].as_i64(), Some(r.get::<i64, _>("mem_total")));
    problem(
        &api.get("/api/v1/devices/pi-9", Some(&admin)).await.unwrap(),
        404,
        "unknown device",
    );
    problem(
        &api.get("/api/v1/devices/Not%20An%20Id", Some(&admin))
            .await
            .unwrap(),
        400,
        "invalid device id",
    );

    // Latest telemetry, field by field against the telemetry table.
    let t = get(&api, &admin, "/api/v1/devices/pi-2/telemetry").await;
    let seq = t["seq"].as_i64().unwrap();
    let r = sqlx::query(
        "SELECT ts, received_at, cpu_pct, load1, load5, load15, mem_total, mem_used, \
         swap_total, swap_used, temp_c, throttled, uptime_s, spool_dropped, spool_backlog, \
         disks, nets FROM telemetry WHERE device_id = 'pi-2' AND seq = ?",
    )
    .bind(seq)
    .fetch_one(&db)
    .await
    .unwrap();
    for col in [
        "ts",
        "received_at",
        "mem_total",
        "mem_used",
        "swap_total",
        "swap_used",
        "uptime_s",
        "spool_dropped",
        "spool_backlog",
    ] {
        assert_eq!(t[col].as_i64(), Some(r.get::<i64, _>(col)), "{col}");
    }
    for col in ["cpu_pct", "load1", "load5", "load15"] {
        assert!(same(&t[col], Some(r.get(col))), "{col}: {t}");
    }
    assert!(same(&t["temp_c"], r.get("temp_c")), "{t}");
    assert_eq!(
        t["throttled"].as_i64(),
        r.get::<Option<i64>, _>("throttled")
    );
    for col in ["disks", "nets"] {
        let stored: Value = serde_json::from_str(&r.get::<String, _>(col)).unwrap();
        assert_eq!(t[col], stored, "{col}");
    }
    let newest: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM telemetry WHERE device_id = 'pi-2'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(seq <= newest);
    problem(
        &api.get("/api/v1/devices/pi-9/telemetry", Some(&admin))
            .await
            .unwrap(),
        404,
        "telemetry of an unknown device",
    );

    // History: a closed range in the past, so no sample can still arrive inside it.
    let to = now_ms();
    let from = to - 120_000;
    wait_for(WAIT, "a pi-1 sample after the range", || async {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(ts) FROM telemetry WHERE device_id = 'pi-1'")
                .fetch_one(&db)
                .await
                .ok()?;
        (newest? > to + 1_500).then_some(())
    })
    .await
    .unwrap();
    let h = get(
        &api,
        &admin,
        &format!("/api/v1/devices/pi-1/history?from={from}&to={to}&points=7"),
    )
    .await;
    let bucket = (to - from + 6) / 7;
    assert_eq!(
        (h["from"].as_i64(), h["to"].as_i64()),
        (Some(from), Some(to))
    );
    assert_eq!(h["bucket_ms"].as_i64(), Some(bucket));
    let points = h["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 7, "{h}");
    let in_range: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM telemetry WHERE device_id = 'pi-1' AND ts >= ? AND ts < ?",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&db)
    .await
    .unwrap();
    let total: i64 = points.iter().map(|p| p["samples"].as_i64().unwrap()).sum();
    assert_eq!(total, in_range, "{h}");
    assert!(total >= 2, "{h}");
    let mut prev = i64::MIN;
    for p in points {
        let t = p["t"].as_i64().unwrap();
        assert!(t > prev && (t - from) % bucket == 0, "{p}");
        prev = t;
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, AVG(cpu_pct) AS cpu_avg, MAX(cpu_pct) AS cpu_max, \
             MAX(mem_total) AS mem_total FROM telemetry \
             WHERE device_id = 'pi-1' AND ts >= ? AND ts < ?",
        )
        .bind(t)
        .bind(t + bucket)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(p["samples"].as_i64(), Some(r.get::<i64, _>("n")), "{p}");
        let avg = r.get::<f64, _>("cpu_avg");
        // An average: summed in another order, so not bit for bit.
        assert!(
            (p["cpu_pct_avg"].as_f64().unwrap() - avg).abs() < 1e-9,
            "{p}"
        );
        assert!(same(&p["cpu_pct_max"], Some(r.get("cpu_max"))), "{p}");
        assert_eq!(
            p["mem_total_max"].as_i64(),
            Some(r.get::<i64, _>("mem_total")),
            "{p}"
        );
    }
    // At one point per sample, every bucket holds one.
    let h = get(
        &api,
        &admin,
        &format!("/api/v1/devices/pi-1/history?from={from}&to={to}&points=2000"),
    )
    .await;
    let per: Vec<i64> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["samples"].as_i64().unwrap())
        .collect();
    assert_eq!(per.iter().sum::<i64>(), in_range);
    assert!(per.iter().all(|&n| n == 1), "{per:?}");
    let day = 86_400_000;
    for query in [
        format!("from={to}&to={from}"),
        format!("from={from}&to={from}"),
        format!("from={}&to={to}", to - 32 * day),
        "points=0".to_owned(),
        "points=2001".to_owned(),
        "from=-5".to_owned(),
        "to=soon".to_owned(),
    ] {
        let r = api
            .get(
                &format!("/api/v1/devices/pi-1/history?{query}"),
                Some(&admin),
            )
            .await
            .unwrap();
        problem(&r, 400, &query);
    }

    // Labels: replaced as a whole, and validated.
    let put = |id: &'static str, body: Value| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            api.call(
                Method::PUT,
                &format!("/api/v1/devices/{id}/labels"),
                Some(&admin),
                Some(&body),
            )
            .await
            .unwrap()
        }
    };
    let new = json!({ "site": "lobby", "floor": "2" });
    let d = ok(
        put("pi-3", json!({ "labels": new })).await,
        200,
        "set labels",
    );
    assert_eq!(d["id"], "pi-3");
    assert_eq!(d["labels"], new);
    assert_eq!(
        get(&api, &admin, "/api/v1/devices/pi-3").await["labels"],
        new
    );
    let stored: String = sqlx::query_scalar("SELECT labels FROM devices WHERE id = 'pi-3'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), new);
    let (n, ids) = page(&api, &admin, "?label=site=lobby").await;
    assert_eq!(
        (n, ids),
        (3, vec!["pi-1".into(), "pi-2".into(), "pi-3".into()])
    );
    assert_eq!(page(&api, &admin, "?label=site=lab").await.0, 0);
    let too_many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (body, status) in [
        (json!({ "labels": { "Bad Key": "x" } }), 400),
        (json!({ "labels": { "a=b": "x" } }), 400),
        (json!({ "labels": { "": "x" } }), 400),
        (json!({ "labels": { "k": "line\nbreak" } }), 400),
        (json!({ "labels": { "k": "v".repeat(256) } }), 400),
        (json!({ "labels": too_many }), 400),
        (json!({ "labels": { "k": 1 } }), 422),
        (json!({ "labels": { "k": "v" }, "extra": 1 }), 422),
        (json!({}), 422),
    ] {
        problem(&put("pi-3", body.clone()).await, status, &body.to_string());
    }
    problem(
        &put("pi-9", json!({ "labels": {} })).await,
        404,
        "labels of unknown device",
    );
    assert_eq!(
        get(&api, &admin, "/api/v1/devices/pi-3").await["labels"],
        new
    );
    // An empty map clears them.
    let d = ok(
        put("pi-3", json!({ "labels": {} })).await,
        200,
        "clear labels",
    );
    assert_eq!(d["labels"], json!({}));

    // Revocation: the device is marked, its certificate revoked, its agent dropped.
    let r = api
        .post("/api/v1/devices/pi-2/revoke", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(r.text, "");
    let d = get(&api, &admin, "/api/v1/devices/pi-2").await;
    assert_eq!(d["status"], "revoked");
    assert!(d["revoked_at"].is_i64(), "{d}");
    assert!(d["certificates"][0]["revoked_at"].is_i64(), "{d}");
    // The database says offline at once; the gateway drops the live connection when it
    // reloads the CRL, and the agent's reconnects fail at the TLS handshake.
    assert_eq!(ctl.online("pi-2").await, Some(0));
    wait_entry(&ctl, 0, DISCONNECTED, "revoked", Some("pi-2"))
        .await
        .unwrap();
    let refused = wait_for(WAIT, "the agent's reconnect refused", || async {
        let n = count_entries(&ctl, REFUSED, "tls", None);
        (n > 0).then_some(n)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\ncontroller:\n{}", pis[1].log(), ctl.log()));
    pis[1].stop();
    assert_eq!(
        page(&api, &admin, "?status=revoked").await,
        (1, vec!["pi-2".into()])
    );
    assert_eq!(
        page(&api, &admin, "?status=online").await,
        (2, vec!["pi-1".into(), "pi-3".into()])
    );
    // Its certificate no longer gets a session.
    let dir = &pis[1].dir;
    let tls = client_tls(
        &ctl.ca_path(),
        Some((&dir.join("device.crt"), &dir.join("device.key"))),
    )
    .unwrap();
    let (_c, mut ev) = client(ctl.mqtt.port(), "pi-2", tls);
    assert!(
        connack(&mut ev).await.is_err(),
        "a revoked device connected; controller log:\n{}",
        ctl.log()
    );
    wait_entry(&ctl, refused, REFUSED, "tls", None)
        .await
        .unwrap();
    let entries = log_entries(&ctl);
    let last_connect = entries
        .iter()
        .rposition(|e| e["message"] == "device connected" && e["device"] == "pi-2");
    let dropped = entries
        .iter()
        .position(|e| is_entry(e, DISCONNECTED, "revoked", Some("pi-2")));
    assert!(
        last_connect < dropped,
        "pi-2 connected after its revocation"
    );
    assert_eq!(ctl.online("pi-2").await, Some(0));
    problem(
        &api.post("/api/v1/devices/pi-2/revoke", Some(&admin), &json!({}))
            .await
            .unwrap(),
        409,
        "revoke twice",
    );
    problem(
        &api.post("/api/v1/devices/pi-9/revoke", Some(&admin), &json!({}))
            .await
            .unwrap(),
        404,
        "revoke unknown",
    );
    // The others are unaffected.
    assert_eq!(ctl.online("pi-1").await, Some(1));
    for p in &mut pis {
        p.stop();
    }
    db.close().await;
}

/// Polls a command until it is in a final state; returns it.
async fn final_command(api: &Api, token: &str, id: &str) -> Value {
    wait_for(WAIT, &format!("command {id} final"), || async {
        let j = api
            .get(&format!("/api/v1/commands/{id}"), Some(token))
            .await
            .ok()?
            .json();
        let s = j["status"].as_str()?.to_owned();
        ["succeeded", "failed", "rejected", "expired", "cancelled"]
            .contains(&s.as_str())
            .then_some(j)
    })
    .await
    .unwrap()
}

/// Command ids and devices of a 202 answer.
fn created(r: Resp) -> Vec<(String, String)> {
    let j = ok(r, 202, "send command");
    j["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["device"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_sent_listed_and_cancelled_through_the_api() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let mut pis = fleet(&ctl, &api, &admin).await;
    let op = api.user(&admin, "olga", "operator").await.unwrap();
    let viewer = api.user(&admin, "vera", "viewer").await.unwrap();

    // One device by id.
    let before = now_ms();
    let sent = created(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "devices": ["pi-1"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
    );
    let after = now_ms();
    assert_eq!(sent.len(), 1);
    let (ping, device) = &sent[0];
    assert_eq!(device, "pi-1");
    assert!(
        ping.len() == 32
            && ping
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{ping}"
    );
    let c = final_command(&api, &viewer, ping).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    assert_eq!(c["id"], ping.as_str());
    assert_eq!(c["device"], "pi-1");
    assert_eq!(c["action"], json!({ "kind": "ping" }));
    assert_eq!(c["reason"], Value::Null);
    let created_at = c["created_at"].as_i64().unwrap();
    assert!((before..=after).contains(&created_at), "{c}");
    for t in ["sent_at", "finished_at"] {
        assert!(c[t].as_i64().unwrap() >= created_at, "{t}: {c}");
    }
    // The default TTL (`commands.default_ttl_s`, one hour) counts from the request.
    let expires = c["expires_at"].as_i64().unwrap();
    assert!(
        (before + 3_600_000..=after + 3_600_000).contains(&expires),
        "{c}"
    );

    // By selector: every matching device, each gets its own command.
    let before = now_ms();
    let sent = created(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "selector": { "site": "lobby" }, "action": { "kind": "ping" }, "ttl_s": 120 }),
        )
        .await
        .unwrap(),
    );
    let after = now_ms();
    let mut devices: Vec<&str> = sent.iter().map(|(_, d)| d.as_str()).collect();
    devices.sort_unstable();
    assert_eq!(devices, ["pi-1", "pi-2"]);
    assert_ne!(sent[0].0, sent[1].0);
    for (id, device) in &sent {
        let c = final_command(&api, &op, id).await;
        assert_eq!(
            (c["status"].as_str(), c["device"].as_str()),
            (Some("succeeded"), Some(device.as_str())),
            "{c}"
        );
        let expires = c["expires_at"].as_i64().unwrap();
        assert!(
            (before + 120_000..=after + 120_000).contains(&expires),
            "{c}"
        );
    }
    problem(
        &api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "selector": { "site": "moon" }, "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        404,
        "selector matching nothing",
    );

    // Offline device: the command waits, and can be cancelled while it does.
    pis[2].stop();
    wait_for(WAIT, "pi-3 offline", || async {
        (ctl.online("pi-3").await == Some(0)).then_some(())
    })
    .await
    .unwrap();
    let sent = created(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "devices": ["pi-3"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
    );
    let waiting = sent[0].0.clone();
    let c = get(&api, &op, &format!("/api/v1/commands/{waiting}")).await;
    assert_eq!(c["status"], "queued", "{c}");
    assert_eq!(c["sent_at"], Value::Null);
    let cancel = format!("/api/v1/commands/{waiting}/cancel");
    problem(
        &api.post(&cancel, Some(&viewer), &json!({})).await.unwrap(),
        403,
        "viewer cancels",
    );
    let j = ok(
        api.post(&cancel, Some(&op), &json!({})).await.unwrap(),
        200,
        "cancel",
    );
    assert_eq!(j, json!({ "id": waiting, "status": "cancelled" }));
    let c = get(&api, &op, &format!("/api/v1/commands/{waiting}")).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    problem(
        &api.post(&cancel, Some(&op), &json!({})).await.unwrap(),
        409,
        "cancel twice",
    );
    problem(
        &api.post(
            &format!("/api/v1/commands/{ping}/cancel"),
            Some(&op),
            &json!({}),
        )
        .await
        .unwrap(),
        409,
        "cancel a finished command",
    );
    let unknown = "0".repeat(32);
    problem(
        &api.post(
            &format!("/api/v1/commands/{unknown}/cancel"),
            Some(&op),
            &json!({}),
        )
        .await
        .unwrap(),
        404,
        "cancel unknown",
    );
    problem(
        &api.get(&format!("/api/v1/commands/{unknown}"), Some(&op))
            .await
            .unwrap(),
        404,
        "show unknown",
    );
    for bad in ["xyz", "ABABABABABABABABABABABABABABABAB"] {
        problem(
            &api.get(&format!("/api/v1/commands/{bad}"), Some(&op))
                .await
                .unwrap(),
            400,
            bad,
        );
        problem(
            &api.post(
                &format!("/api/v1/commands/{bad}/cancel"),
                Some(&op),
                &json!({}),
            )
            .await
            .unwrap(),
            400,
            bad,
        );
    }
    // The agent, back online, never runs the cancelled command.
    pis[2].start();
    wait_for(WAIT, "pi-3 online", || async {
        (ctl.online("pi-3").await == Some(1)).then_some(())
    })
    .await
    .unwrap();
    let after = created(
        api.post(
            "/api/v1/commands",
            Some(&op),
            &json!({ "devices": ["pi-3"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
    );
    let c = final_command(&api, &op, &after[0].0).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    let c = get(&api, &op, &format!("/api/v1/commands/{waiting}")).await;
    assert_eq!(
        (c["status"].as_str(), &c["sent_at"]),
        (Some("cancelled"), &Value::Null)
    );

    // The list: newest first, filtered and paged.
    let all = get(&api, &viewer, "/api/v1/commands").await;
    assert_eq!(all["total"], 5, "{all}");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["id"], after[0].0.as_str());
    assert_eq!(items[1]["id"], waiting.as_str());
    assert_eq!(items[4]["id"], ping.as_str());
    let created_ats: Vec<i64> = items
        .iter()
        .map(|c| c["created_at"].as_i64().unwrap())
        .collect();
    assert!(
        created_ats.windows(2).all(|w| w[0] >= w[1]),
        "{created_ats:?}"
    );
    assert!(
        items.iter().all(|c| c.get("stdout").is_none()),
        "list carries no output"
    );
    let count = |j: &Value| -> (i64, usize) {
        (
            j["total"].as_i64().unwrap(),
            j["items"].as_array().unwrap().len(),
        )
    };
    let j = get(&api, &viewer, "/api/v1/commands?device=pi-1").await;
    assert_eq!(count(&j), (2, 2));
    assert!(
        j["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["device"] == "pi-1")
    );
    let j = get(&api, &viewer, "/api/v1/commands?status=succeeded").await;
    assert_eq!(count(&j), (4, 4));
    let j = get(&api, &viewer, "/api/v1/commands?status=cancelled").await;
    assert_eq!(count(&j), (1, 1));
    assert_eq!(j["items"][0]["id"], waiting.as_str());
    let j = get(
        &api,
        &viewer,
        "/api/v1/commands?device=pi-3&status=succeeded",
    )
    .await;
    assert_eq!(count(&j), (1, 1));
    let j = get(&api, &viewer, "/api/v1/commands?limit=2&offset=1").await;
    assert_eq!(count(&j), (5, 2));
    assert_eq!(j["items"][0]["id"], waiting.as_str());
    let j = get(&api, &viewer, "/api/v1/commands?device=pi-9").await;
    assert_eq!(count(&j), (0, 0));
    for query in [
        "status=done",
        "device=Not%20An%20Id",
        "limit=0",
        "limit=501",
        "offset=-1",
    ] {
        problem(
            &api.get(&format!("/api/v1/commands?{query}"), Some(&viewer))
                .await
                .unwrap(),
            400,
            query,
        );
    }

    // Invalid requests: nothing is created.
    let bad = [
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "service", "op": "restart", "unit": "kiosk;reboot" } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "service", "op": "restart", "unit": "$(id)" } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "script", "name": "report", "args": ["a|b"] } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "journal", "unit": "kiosk", "lines": 0 } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "shell", "cmd": "id" } }),
            422,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "ping" }, "ttl_s": 0 }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "action": { "kind": "ping" }, "ttl_s": 604_801 }),
            400,
        ),
        (json!({ "devices": [], "action": { "kind": "ping" } }), 400),
        (
            json!({ "devices": ["Pi 1"], "action": { "kind": "ping" } }),
            400,
        ),
        (
            json!({ "devices": ["pi-1"], "selector": { "site": "lobby" }, "action": { "kind": "ping" } }),
            400,
        ),
        (json!({ "action": { "kind": "ping" } }), 400),
        (
            json!({ "devices": ["pi-9"], "action": { "kind": "ping" } }),
            404,
        ),
        (
            json!({ "devices": ["pi-1", "pi-9"], "action": { "kind": "ping" } }),
            404,
        ),
    ];
    for (body, status) in bad {
        let r = api
            .post("/api/v1/commands", Some(&op), &body)
            .await
            .unwrap();
        problem(&r, status, &body.to_string());
    }
    problem(
        &api.post(
            "/api/v1/commands",
            Some(&viewer),
            &json!({ "devices": ["pi-1"], "action": { "kind": "ping" } }),
        )
        .await
        .unwrap(),
        403,
        "viewer sends",
    );
    assert_eq!(get(&api, &viewer, "/api/v1/commands").await["total"], 5);
    for p in &mut pis {
        p.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_work_with_the_real_agent() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = || async { get(&api, &admin, "/api/v1/tokens").await };
    let find = |tokens: &Value, id: &str| -> Value {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("no token {id} in {tokens}"))
            .clone()
    };

    let before = now_ms();
    let t = api_token(
        &api,
        &admin,
        json!({ "ttl_s": 600, "labels": { "site": "lab", "rack": "3" } }),
    )
    .await;
    let after = now_ms();
    let (id, secret) = (t["id"].as_str().unwrap(), t["token"].as_str().unwrap());
    assert!(
        id.len() == 12
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{t}"
    );
    let expires = t["expires_at"].as_i64().unwrap();
    assert!(
        (before + 600_000..=after + 600_000).contains(&expires),
        "{t}"
    );
    let cmd = t["enroll_command"].as_str().unwrap();
    assert_eq!(
        cmd,
        format!(
            "pifleet-agent enroll --controller {} --token {secret}",
            ctl.url()
        )
    );
    let tokens = list().await;
    let info = find(&tokens, id);
    assert_eq!(info["state"], "unused");
    assert_eq!(info["labels"], json!({ "site": "lab", "rack": "3" }));
    assert_eq!(info["expires_at"].as_i64(), Some(expires));
    assert_eq!(
        (&info["used_by"], &info["used_at"]),
        (&Value::Null, &Value::Null)
    );
    assert!(
        !tokens.to_string().contains(secret),
        "the list shows a secret"
    );

    // The enroll command as shown, run by the real agent.
    let args: Vec<&str> = cmd.split(' ').collect();
    assert_eq!(&args[..2], ["pifleet-agent", "enroll"]);
    let out = agent_enroll(&args[2..], &tmp.path().join("a"), Some("pi-lab"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = find(&list().await, id);
    assert_eq!(info["state"], "used");
    assert_eq!(info["used_by"], "pi-lab");
    let used_at = info["used_at"].as_i64().unwrap();
    assert!(used_at >= after && used_at <= now_ms(), "{info}");
    let d = get(&api, &admin, "/api/v1/devices/pi-lab").await;
    assert_eq!(d["labels"], json!({ "site": "lab", "rack": "3" }));
    assert_eq!(d["status"], "offline");
    // Single use.
    let out = agent_enroll(&args[2..], &tmp.path().join("b"), Some("pi-again"));
    assert!(!out.status.success());
    problem(
        &api.get("/api/v1/devices/pi-again", Some(&admin))
            .await
            .unwrap(),
        404,
        "second enrollment with a used token",
    );

    // A token naming the device: the device must propose that id, and the command shown
    // makes it do so.
    let named = api_token(&api, &admin, json!({ "name": "pi-named" })).await;
    let (nid, nsecret) = (
        named["id"].as_str().unwrap(),
        named["token"].as_str().unwrap(),
    );
    assert_eq!(find(&list().await, nid)["name"], "pi-named");
    let cmd = named["enroll_command"].as_str().unwrap();
    assert_eq!(
        cmd,
        format!(
            "pifleet-agent enroll --controller {} --token {nsecret} --device-id pi-named",
            ctl.url()
        )
    );
    let out = agent_enroll(
        &["--controller", &ctl.url(), "--token", nsecret],
        &tmp.path().join("c"),
        Some("pi-proposed"),
    );
    assert!(
        !out.status.success(),
        "enrolled as another id than the token's"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pi-named"), "{stderr}");
    assert_eq!(find(&list().await, nid)["state"], "unused");
    let args: Vec<&str> = cmd.split(' ').collect();
    let out = agent_enroll(&args[2..], &tmp.path().join("c"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        get(&api, &admin, "/api/v1/devices/pi-named").await["id"],
        "pi-named"
    );
    assert_eq!(find(&list().await, nid)["used_by"], "pi-named");
    problem(
        &api.get("/api/v1/devices/pi-proposed", Some(&admin))
            .await
            .unwrap(),
        404,
        "no device for the refused proposal",
    );

    // Revoking an unused token: the agent is refused with it afterwards.
    let unused = api_token(&api, &admin, json!({})).await;
    let uid = unused["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{uid}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    assert_eq!(find(&list().await, &uid)["state"], "revoked");
    let out = agent_enroll(
        &[
            "--controller",
            &ctl.url(),
            "--token",
            unused["token"].as_str().unwrap(),
        ],
        &tmp.path().join("d"),
        Some("pi-late"),
    );
    assert!(!out.status.success(), "enrolled with a revoked token");
    assert!(!tmp.path().join("d").join("device.crt").exists());
    problem(
        &api.get("/api/v1/devices/pi-late", Some(&admin))
            .await
            .unwrap(),
        404,
        "device of a revoked token",
    );
    for (path, status) in [
        (format!("/api/v1/tokens/{uid}"), 404),
        (format!("/api/v1/tokens/{id}"), 404),
        ("/api/v1/tokens/000000000000".to_owned(), 404),
        ("/api/v1/tokens/ABCDEF012345".to_owned(), 400),
        ("/api/v1/tokens/abc".to_owned(), 400),
    ] {
        let r = api
            .call(Method::DELETE, &path, Some(&admin), None)
            .await
            .unwrap();
        problem(&r, status, &path);
    }
    assert_eq!(find(&list().await, id)["state"], "used");

    // Invalid requests create nothing.
    let n = list().await.as_array().unwrap().len();
    for (body, status) in [
        (json!({ "ttl_s": 0 }), 400),
        (json!({ "ttl_s": 10_000_000_000_u64 }), 400),
        (json!({ "ttl_s": -1 }), 422),
        (json!({ "name": "Not An Id" }), 400),
        (json!({ "labels": { "Site": "x" } }), 400),
        (json!({ "labels": { "site": "x" }, "uses": 5 }), 422),
    ] {
        let r = api
            .post("/api/v1/tokens", Some(&admin), &body)
            .await
            .unwrap();
        problem(&r, status, &body.to_string());
    }
    assert_eq!(list().await.as_array().unwrap().len(), n);
}

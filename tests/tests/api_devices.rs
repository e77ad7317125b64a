//! Devices through the admin API, with real agents (telemetry every second): the list with
//! its filters, sort and paging, device detail, latest telemetry and history checked
//! against the telemetry table, labels, and revocation (the agent is dropped and refused).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pifleet_tests::api::Api;
use pifleet_tests::apikit::problem;
use pifleet_tests::fleetkit::{WAIT, fleet, get, ok};
use pifleet_tests::harness::{Controller, now_ms, wait_for};
use pifleet_tests::logs::{
    DISCONNECTED, REFUSED, count_entries, is_entry, log_entries, wait_entry,
};
use pifleet_tests::mqtt::{client, client_tls, connack};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;

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

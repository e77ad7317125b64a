//! The Prometheus endpoints with a real agent: the controller's `/metrics`, a device's
//! `/metrics/devices/{id}` (fresh, then stale once the agent stops), and HTTP service
//! discovery; scrape authentication (token, allowlisted address, refusal); and
//! `promtool check metrics` on what is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::promkit::{promtool_check, value};

const WAIT: Duration = Duration::from_secs(30);

fn scrape_token(ctl: &Controller) -> String {
    std::fs::read_to_string(ctl.data.join("scrape.token"))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_device_metrics_and_discovery() {
    let ctl = Controller::start_with("[metrics]\nstale_after_s = 5\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let token = scrape_token(&ctl);
    let mut agent = Agent::enroll(&ctl, "pi-metrics", 1).unwrap();
    agent.start().unwrap();
    let path = "/metrics/devices/pi-metrics";

    // Without the token nothing is served, from any of the three endpoints.
    for p in ["/metrics", path, "/api/v1/prometheus/sd"] {
        let r = api.get(p, None).await.unwrap();
        assert_eq!(r.status, 401, "{p}: {}", r.text);
        let r = api.get(p, Some("pfs1.not-the-token")).await.unwrap();
        assert_eq!(r.status, 401, "{p}: {}", r.text);
    }

    // A fresh device: every gauge, with units in the names.
    let fresh = wait_for(WAIT, "fresh device metrics", || {
        let api = api.clone();
        let token = token.clone();
        async move {
            let r = api.get(path, Some(&token)).await.ok()?;
            (r.status == 200 && value(&r.text, "pifleet_device_cpu_ratio").is_some()).then_some(r)
        }
    })
    .await
    .unwrap();
    assert!(fresh.header("content-type").starts_with("text/plain"));
    let t = &fresh.text;
    assert_eq!(value(t, "pifleet_device_up"), Some(1.0), "{t}");
    let cpu = value(t, "pifleet_device_cpu_ratio").unwrap();
    assert!((0.0..=1.0).contains(&cpu), "{t}");
    let total = value(t, "pifleet_device_memory_total_bytes").unwrap();
    let used = value(t, "pifleet_device_memory_used_bytes").unwrap();
    assert!(total > 0.0 && used > 0.0 && used <= total, "{t}");
    assert!(t.contains("pifleet_device_disk_used_bytes{mount=\""), "{t}");
    assert!(
        t.contains("pifleet_device_network_receive_bytes_total{interface=\""),
        "{t}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let seen = value(t, "pifleet_device_last_seen_timestamp_seconds").unwrap();
    assert!((now - seen).abs() < 60.0, "{seen} vs {now}");
    assert_eq!(
        value(t, "pifleet_device_spool_dropped_total"),
        Some(0.0),
        "{t}"
    );
    let expiry = value(t, "pifleet_device_certificate_expiry_timestamp_seconds").unwrap();
    assert!(expiry > now + 300.0 * 86_400.0, "{t}");
    promtool_check(t);

    // Service discovery: one target group for the device, pointing back at the controller.
    let sd = api
        .get("/api/v1/prometheus/sd", Some(&token))
        .await
        .unwrap();
    assert_eq!(sd.status, 200, "{}", sd.text);
    let groups = sd.json();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(
        g["targets"][0].as_str().unwrap(),
        format!("localhost:{}", ctl.https.port())
    );
    assert_eq!(g["labels"]["device"], "pi-metrics");
    assert_eq!(g["labels"]["__metrics_path__"], path);
    assert!(g["labels"]["name"].as_str().is_some_and(|n| !n.is_empty()));

    // The controller's own metrics: bounded labels, device counts, MQTT traffic both ways
    // (the ack for the stored sample is published right after its commit), HTTP and process.
    let m = wait_for(WAIT, "an ack counted as sent", || {
        let api = api.clone();
        let token = token.clone();
        async move {
            let r = api.get("/metrics", Some(&token)).await.ok()?;
            (value(&r.text, "pifleet_mqtt_messages_out_total{kind=\"ack\"}")? >= 1.0).then_some(r)
        }
    })
    .await
    .unwrap();
    assert_eq!(m.status, 200, "{}", m.text);
    let t = &m.text;
    assert!(
        value(t, "pifleet_mqtt_messages_in_total{kind=\"telemetry\"}").unwrap() >= 1.0,
        "{t}"
    );
    assert!(
        value(t, "pifleet_mqtt_bytes_in_total").unwrap() > 0.0,
        "{t}"
    );
    assert!(
        value(t, "pifleet_mqtt_bytes_out_total").unwrap() > 0.0,
        "{t}"
    );
    assert_eq!(
        value(t, "pifleet_devices{state=\"online\"}"),
        Some(1.0),
        "{t}"
    );
    assert_eq!(
        value(t, "pifleet_devices{state=\"enrolled\"}"),
        Some(1.0),
        "{t}"
    );
    assert!(
        value(t, "pifleet_database_size_bytes").unwrap() > 0.0,
        "{t}"
    );
    assert!(
        t.contains("pifleet_http_requests_total{method=\"GET\",route=\"/metrics/devices/{id}\",status=\"200\"}"),
        "{t}"
    );
    assert!(
        t.contains("pifleet_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"}"),
        "{t}"
    );
    assert!(
        value(t, "pifleet_ingest_samples_total").unwrap() >= 1.0,
        "{t}"
    );
    assert!(
        value(t, "process_resident_memory_bytes").unwrap() > 0.0,
        "{t}"
    );
    assert!(value(t, "pifleet_server_certificate_expiry_timestamp_seconds").unwrap() > now);
    // No backup yet on a fresh controller.
    assert_eq!(
        value(t, "pifleet_backup_last_success_timestamp_seconds"),
        Some(0.0),
        "{t}"
    );
    assert!(
        !t.contains("pi-metrics"),
        "no device ids in controller metrics:\n{t}"
    );
    promtool_check(t);

    // Stop the agent: the device turns stale and old values are not repeated.
    agent.stop();
    let stale = wait_for(WAIT, "stale device metrics", || {
        let api = api.clone();
        let token = token.clone();
        async move {
            let r = api.get(path, Some(&token)).await.ok()?;
            (value(&r.text, "pifleet_device_up") == Some(0.0)).then_some(r)
        }
    })
    .await
    .unwrap();
    let t = &stale.text;
    assert!(
        value(t, "pifleet_device_last_seen_timestamp_seconds").is_some(),
        "{t}"
    );
    assert!(value(t, "pifleet_device_cpu_ratio").is_none(), "{t}");
    assert!(!t.contains("pifleet_device_disk_used_bytes"), "{t}");
    promtool_check(t);

    // Unknown and malformed ids.
    let r = api
        .get("/metrics/devices/pi-none", Some(&token))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text);
    let r = api
        .get("/metrics/devices/NOT_AN_ID", Some(&token))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_scrapers_need_no_token_and_others_do() {
    let ctl = Controller::start_with("[metrics]\nscrape_allow = [\"127.0.0.0/8\"]\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api.get("/metrics", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.get("/api/v1/prometheus/sd", None).await.unwrap();
    assert_eq!((r.status, r.text.as_str()), (200, "[]"));
    // The allowlist opens the scrape endpoints only, not the rest of the API.
    let r = api.get("/api/v1/devices", None).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text);

    let ctl = Controller::start_with("[metrics]\nscrape_allow = [\"10.0.0.0/8\"]\n")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api.get("/metrics", None).await.unwrap();
    assert_eq!(r.status, 401, "{}", r.text);
}

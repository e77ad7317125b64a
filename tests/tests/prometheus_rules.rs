#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Prometheus and Grafana files in `deploy/`, checked by real tools: `promtool check
//! config` and `check rules`, the rules' unit tests (`promtool test rules`), every alert tested
//! firing and silent with a runbook section, and the dashboards' structure and metric names.
//! Needs `promtool` (Debian: `apt-get install prometheus`); fails, never skips, without it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The controller's metrics (job `pifleet-controller`) and the per-device ones (job
/// `pifleet-devices`) that the rules and dashboards may use.
const METRICS: &[&str] = &[
    "pifleet_http_requests_total",
    "pifleet_mqtt_connections",
    "pifleet_mqtt_connects_total",
    "pifleet_mqtt_disconnects_total",
    "pifleet_mqtt_refused_total",
    "pifleet_mqtt_acl_violations_total",
    "pifleet_mqtt_throttled_total",
    "pifleet_mqtt_messages_in_total",
    "pifleet_mqtt_bytes_in_total",
    "pifleet_mqtt_messages_out_total",
    "pifleet_mqtt_bytes_out_total",
    "pifleet_mqtt_connection_limit",
    "pifleet_mqtt_out_dropped_total",
    "pifleet_mqtt_preauth_connections",
    "pifleet_ingest_queue_depth",
    "pifleet_ingest_samples_total",
    "pifleet_ingest_dropped_total",
    "pifleet_ingest_commit_failures_total",
    "pifleet_ready",
    "pifleet_commands_total",
    "pifleet_auth_events_total",
    "pifleet_devices",
    "pifleet_database_size_bytes",
    "pifleet_server_certificate_expiry_timestamp_seconds",
    "pifleet_backup_last_success_timestamp_seconds",
    "pifleet_device_certificates_renewal_overdue",
    "pifleet_certificate_renewals_total",
    "pifleet_device_up",
    "pifleet_device_last_seen_timestamp_seconds",
    "pifleet_device_cpu_ratio",
    "pifleet_device_load1",
    "pifleet_device_memory_total_bytes",
    "pifleet_device_memory_used_bytes",
    "pifleet_device_swap_used_bytes",
    "pifleet_device_temperature_celsius",
    "pifleet_device_throttled",
    "pifleet_device_under_voltage",
    "pifleet_device_throttling",
    "pifleet_device_disk_total_bytes",
    "pifleet_device_disk_used_bytes",
    "pifleet_device_network_receive_bytes_total",
    "pifleet_device_network_transmit_bytes_total",
    "pifleet_device_uptime_seconds",
    "pifleet_device_spool_backlog_samples",
    "pifleet_device_spool_dropped_total",
    "pifleet_device_certificate_expiry_timestamp_seconds",
    "pifleet_device_units_crash_looping",
    "pifleet_watchdog_events_total",
    "pifleet_rollouts",
];

/// Histograms: queried through their `_bucket`, `_sum` and `_count` series.
const HISTOGRAMS: &[&str] = &[
    "pifleet_http_request_duration_seconds",
    "pifleet_ingest_batch_samples",
    "pifleet_ingest_commit_seconds",
    "pifleet_command_roundtrip_seconds",
];

/// The datasource uid the provisioning file fixes and the dashboards refer to.
const DATASOURCE_UID: &str = "pifleet-prometheus";

/// Where `prometheus.yml` expects the rule files, scrape token and CA.
const CONFIG_DIR: &str = "/etc/prometheus/pifleet/";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn prometheus_dir() -> PathBuf {
    repo().join("deploy/prometheus")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs promtool in `dir` and returns its output; fails if it fails or is not installed.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not installed: these tests check deploy/prometheus with it. \
             Install it with `sudo apt-get install prometheus` (Debian/Ubuntu ship promtool \
             in that package), or put the promtool binary of a Prometheus release on PATH."
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

/// Identifiers (`[A-Za-z0-9_:]+`) in PromQL or YAML text.
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| !t.is_empty())
}

/// Whether `name` is a metric the controller exposes (or a series of one of its histograms).
fn known_metric(name: &str) -> bool {
    METRICS.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| HISTOGRAMS.contains(&base))
        })
}

/// `- alert: Name` and `- record: name` entries of a rule file, as (kind, name).
fn rule_names(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().strip_prefix("- ")?;
            let (kind, name) = l.split_once(": ")?;
            matches!(kind, "alert" | "record").then(|| (kind, name.trim()))
        })
        .collect()
}

fn rule_files() -> Vec<(String, String)> {
    ["alerts.yml", "slo.yml"]
        .iter()
        .map(|f| (f.to_string(), read(&prometheus_dir().join(f))))
        .collect()
}

fn test_files() -> Vec<PathBuf> {
    let dir = prometheus_dir().join("tests");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule tests in {}", dir.display());
    files
}

#[test]
fn scrape_config_passes_promtool_check_config() {
    let config = read(&prometheus_dir().join("prometheus.yml"));
    for job in ["job_name: pifleet-controller", "job_name: pifleet-devices"] {
        assert!(
            config.contains(job),
            "the rules and dashboards select on `{job}`"
        );
    }
    assert!(config.contains("http_sd_configs:") && config.contains("/api/v1/prometheus/sd"));
    // check config opens every file the config names: lay out a copy of /etc/prometheus/pifleet
    // with the real rule files and a stand-in token and CA, and point the config at it.
    assert!(
        config.contains(CONFIG_DIR),
        "prometheus.yml no longer uses {CONFIG_DIR}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pifleet");
    fs::create_dir(&dir).unwrap();
    for f in ["alerts.yml", "slo.yml"] {
        fs::copy(prometheus_dir().join(f), dir.join(f)).unwrap();
    }
    fs::write(dir.join("scrape.token"), "stand-in-scrape-token\n").unwrap();
    fs::write(
        dir.join("ca.crt"),
        "stand-in CA: promtool checks that it exists\n",
    )
    .unwrap();
    let local = config.replace(CONFIG_DIR, &format!("{}/", dir.display()));
    assert!(
        !local.contains("/etc/prometheus"),
        "a path was not rewritten"
    );
    fs::write(tmp.path().join("prometheus.yml"), local).unwrap();

    let out = promtool(tmp.path(), &["check", "config", "prometheus.yml"]);
    assert!(out.contains("2 rule files found"), "{out}");
    for f in ["alerts.yml", "slo.yml"] {
        assert!(
            out.contains(&format!("Checking {}", dir.join(f).display())),
            "{out}"
        );
    }
}

#[test]
fn rule_files_pass_promtool_check_rules() {
    promtool(
        &prometheus_dir(),
        &["check", "rules", "alerts.yml", "slo.yml"],
    );
}

#[test]
fn rules_pass_their_unit_tests() {
    let files = test_files();
    let mut args = vec!["test".to_string(), "rules".to_string()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = promtool(&prometheus_dir(), &args);
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "{out}");
}

/// Each `alertname:` in the unit tests, with whether that check expects it firing.
fn alert_checks() -> Vec<(String, bool)> {
    let mut checks = Vec::new();
    for file in test_files() {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line.strip_prefix("alertname:") else {
                continue;
            };
            let next = lines.get(i + 1).copied().unwrap_or_default();
            assert!(
                next.starts_with("exp_alerts:"),
                "{}: `exp_alerts` must follow `{line}`",
                file.display()
            );
            checks.push((name.trim().to_string(), next != "exp_alerts: []"));
        }
    }
    checks
}

#[test]
fn every_alert_is_tested_firing_and_silent() {
    let checks = alert_checks();
    let mut alerts = BTreeSet::new();
    for (file, text) in rule_files() {
        for (kind, name) in rule_names(&text) {
            if kind == "alert" {
                assert!(alerts.insert(name.to_string()), "{file}: {name} twice");
            }
        }
    }
    assert!(
        alerts.len() >= 17,
        "expected at least 17 alerts: {alerts:?}"
    );
    for alert in &alerts {
        for firing in [true, false] {
            assert!(
                checks.iter().any(|(n, f)| n == alert && *f == firing),
                "{alert} has no unit test where it is {}",
                if firing { "firing" } else { "silent" }
            );
        }
    }
    for (name, _) in &checks {
        assert!(
            alerts.contains(name),
            "the unit tests check unknown alert {name}"
        );
    }
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_severity_summary_description_and_a_runbook_section() {
    let runbook = read(&repo().join("docs/RUNBOOK.md"));
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    for (file, text) in rule_files() {
        // Each alert's block runs to the next rule or group.
        let mut blocks: BTreeMap<String, String> = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            let t = line.trim_start();
            if t.starts_with("- record:") || t.starts_with("- name:") {
                current = None;
            } else if let Some(name) = t.strip_prefix("- alert:") {
                current = Some(name.trim().to_string());
            }
            if let Some(name) = &current {
                let block = blocks.entry(name.clone()).or_default();
                block.push_str(line);
                block.push('\n');
            }
        }
        assert!(!blocks.is_empty(), "{file} has no alerts");
        for (name, block) in blocks {
            for key in [
                "severity:",
                "summary:",
                "description:",
                "runbook: \"docs/RUNBOOK.md#",
            ] {
                assert!(block.contains(key), "{file}: {name} has no `{key}`");
            }
            assert!(
                block.contains("severity: critical") || block.contains("severity: warning"),
                "{file}: {name}: severity is critical (pages) or warning (tickets)"
            );
            let link = block.split("docs/RUNBOOK.md#").nth(1).unwrap();
            let target: String = link.chars().take_while(|c| *c != '"').collect();
            assert_eq!(
                target,
                name.to_lowercase(),
                "{file}: {name}'s runbook anchor"
            );
            assert!(
                anchors.contains(&target),
                "{file}: {name} links docs/RUNBOOK.md#{target}, which has no such section"
            );
        }
    }
}

#[test]
fn rules_use_only_exposed_metrics_and_recorded_series() {
    let files = rule_files();
    let recorded: BTreeSet<&str> = files
        .iter()
        .flat_map(|(_, text)| rule_names(text))
        .filter(|(kind, _)| *kind == "record")
        .map(|(_, name)| name)
        .collect();
    assert!(recorded.len() >= 14, "SLO recording rules: {recorded:?}");
    for (file, text) in &files {
        // Expressions and annotations; comments may use wildcards like `pifleet_device_*`.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for id in identifiers(&code) {
            if id.starts_with("pifleet:") {
                assert!(recorded.contains(id), "{file} uses unrecorded series {id}");
            } else if id.starts_with("pifleet_") {
                assert!(known_metric(id), "{file} uses unknown metric {id}");
            }
        }
    }
}

fn dashboard(name: &str) -> Value {
    let path = repo().join("deploy/grafana/dashboards").join(name);
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dash["panels"].as_array().expect("panels is an array") {
        all.push(p);
        if let Some(nested) = p["panels"].as_array() {
            all.extend(nested);
        }
    }
    all
}

/// Every PromQL expression: panel targets and query variables.
fn expressions(dash: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = panels(dash)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target has an expr")
                .to_string()
        })
        .collect();
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

fn check_dashboard(name: &str) -> Value {
    let dash = dashboard(name);
    let title = dash["title"].as_str().unwrap_or(name).to_string();
    assert_eq!(dash["schemaVersion"], 39, "{title}: schemaVersion");
    assert!(
        dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{title}: uid"
    );
    assert!(
        !dash.to_string().contains("${DS_"),
        "{title} uses an import-time ${{DS_…}} input instead of the fixed datasource uid"
    );
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for p in panels(&dash) {
        let ptitle = p["title"].as_str().unwrap_or("?").to_string();
        let id = p["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{title}: {ptitle} has no id"));
        assert!(
            ids.insert(id),
            "{title}: panel id {id} ({ptitle}) is not unique"
        );
        assert!(p["type"].is_string(), "{title}: {ptitle} has no type");
        let g = &p["gridPos"];
        let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
            g[k].as_i64()
                .unwrap_or_else(|| panic!("{title}: {ptitle} gridPos.{k}"))
        });
        assert!(
            h > 0 && w > 0 && x >= 0 && y >= 0 && x + w <= 24,
            "{title}: {ptitle} {g}"
        );
        for (bx, by, bw, bh, other) in &boxes {
            let overlap = x < bx + bw && *bx < x + w && y < by + bh && *by < y + h;
            assert!(!overlap, "{title}: {ptitle} overlaps {other}");
        }
        boxes.push((x, y, w, h, ptitle.clone()));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], DATASOURCE_UID, "{title}: {ptitle}");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: {ptitle}"));
        assert!(!targets.is_empty(), "{title}: {ptitle} has no query");
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DATASOURCE_UID, "{title}: {ptitle}");
            assert!(
                ref_ids.insert(t["refId"].as_str().unwrap()),
                "{title}: {ptitle}"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: {ptitle} has an empty query"
            );
        }
    }
    for expr in expressions(&dash) {
        for id in identifiers(&expr).filter(|i| i.contains("pifleet_")) {
            assert!(
                known_metric(id),
                "{title} queries unknown metric {id} in `{expr}`"
            );
        }
    }
    dash
}

#[test]
fn fleet_dashboard_is_valid_and_queries_only_exposed_metrics() {
    let dash = check_dashboard("pifleet-fleet.json");
    let exprs = expressions(&dash).join("\n");
    for needle in [
        "pifleet_devices",
        "ALERTS",
        "pifleet_device_cpu_ratio",
        "pifleet_device_temperature_celsius",
        "pifleet_device_memory_used_bytes",
        "pifleet_device_disk_used_bytes",
        "pifleet_ingest_samples_total",
        "pifleet_ingest_commit_seconds_bucket",
        "pifleet_http_requests_total",
        "pifleet_http_request_duration_seconds_bucket",
        "pifleet_mqtt_connections",
    ] {
        assert!(
            exprs.contains(needle),
            "the fleet dashboard shows no {needle}"
        );
    }
}

#[test]
fn device_dashboard_is_valid_and_selects_one_device() {
    let dash = check_dashboard("pifleet-device.json");
    let vars = dash["templating"]["list"].as_array().unwrap();
    let device = vars
        .iter()
        .find(|v| v["name"] == "device")
        .expect("a `device` template variable");
    assert_eq!(
        device["definition"],
        "label_values(pifleet_device_up, device)"
    );
    assert_eq!(device["datasource"]["uid"], DATASOURCE_UID);
    let exprs = expressions(&dash);
    for expr in exprs.iter().filter(|e| e.contains("pifleet_device_")) {
        if !expr.starts_with("label_values(") {
            assert!(expr.contains("$device"), "not filtered by device: {expr}");
        }
    }
    let all = exprs.join("\n");
    for needle in [
        "pifleet_device_cpu_ratio",
        "pifleet_device_memory_used_bytes",
        "pifleet_device_temperature_celsius",
        "pifleet_device_disk_used_bytes",
        "pifleet_device_network_receive_bytes_total",
        "pifleet_device_throttling",
        "pifleet_device_under_voltage",
        "pifleet_device_uptime_seconds",
        "pifleet_device_spool_backlog_samples",
    ] {
        assert!(
            all.contains(needle),
            "the device dashboard shows no {needle}"
        );
    }
}

#[test]
fn grafana_provisioning_fixes_the_datasource_uid_the_dashboards_use() {
    let prov = repo().join("deploy/grafana/provisioning");
    let ds = read(&prov.join("datasources.yml"));
    assert!(ds.contains(&format!("uid: {DATASOURCE_UID}")), "{ds}");
    assert!(ds.contains("type: prometheus"), "{ds}");
    let dashboards = read(&prov.join("dashboards.yml"));
    assert!(
        dashboards.contains("type: file") && dashboards.contains("path:"),
        "{dashboards}"
    );
}

/// The Alertmanager inhibit rules that docs/OBSERVABILITY.md tells users to add pass
/// `amtool check-config` (Debian: `apt-get install prometheus-alertmanager`), and name only
/// alerts that exist.
#[test]
fn documented_inhibit_rules_pass_amtool() {
    let doc = read(&repo().join("docs/OBSERVABILITY.md"));
    let section = doc
        .split("### Alertmanager")
        .nth(1)
        .expect("an Alertmanager section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block in the Alertmanager section");
    assert!(block.starts_with("inhibit_rules:"), "{block}");
    let alerts: BTreeSet<String> = rule_files()
        .iter()
        .flat_map(|(_, text)| {
            rule_names(text)
                .into_iter()
                .filter(|(kind, _)| *kind == "alert")
                .map(|(_, n)| n.to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    // Every alert name or pattern in a matcher matches at least one real alert.
    for matcher in block.split("alertname").skip(1) {
        let value = matcher
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("unquoted matcher: {matcher}"));
        let found = value.split('|').all(|v| {
            let v = v.trim_start_matches('(').trim_end_matches(')');
            match v.split_once(".*") {
                Some((pre, post)) => alerts
                    .iter()
                    .any(|a| a.starts_with(pre) && a.ends_with(post)),
                None => alerts.contains(v),
            }
        });
        assert!(found, "{value} matches no alert in {alerts:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alertmanager.yml");
    fs::write(
        &config,
        format!("route:\n  receiver: default\nreceivers:\n  - name: default\n{block}"),
    )
    .unwrap();
    let out = match Command::new("amtool")
        .arg("check-config")
        .arg(&config)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "amtool is not installed: install it with `sudo apt-get install prometheus-alertmanager`"
        ),
        Err(e) => panic!("cannot run amtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "amtool check-config failed:\n{text}");
    assert!(
        text.contains("Found:") && text.contains("inhibit"),
        "{text}"
    );
}

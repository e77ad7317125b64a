//! A real Prometheus server (Debian's `prometheus`) configured from the files in
//! `deploy/prometheus/` exactly as docs/OBSERVABILITY.md tells users to (placeholders
//! replaced), scraping `pifleet-controller demo`: it discovers one target per demo device
//! through the HTTP SD endpoint, its query API returns every device's CPU and temperature,
//! every alert and SLO rule evaluates without error against the real series, and the offline
//! alert fires for the one agent that is stopped — and only for it.
//!
//! Two things differ from the shipped files, both only to make the test take seconds: the
//! scrape, evaluation and discovery intervals (and the spool group's own interval) become
//! 1 s, and the offline alert's `for` becomes 3 s (its 5 m is checked by the promtool unit tests in `prometheus_rules`).
//! Needs `prometheus` (Debian: `apt-get install prometheus`); fails, never skips, without it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::harness::{bin, wait_for};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const AGENTS: usize = 3;

/// What `pifleet-controller demo` printed about itself.
#[derive(Debug)]
struct DemoInfo {
    https: SocketAddr,
    data: PathBuf,
    agents: BTreeMap<String, i32>,
    admin_password: String,
}

/// The demo process; stopped with SIGTERM (so it stops its agents and controller) on drop.
struct Demo {
    child: Child,
    info: DemoInfo,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin("pifleet-controller").unwrap())
            .args(["demo", "--agents", &AGENTS.to_string(), "--interval", "1"])
            .arg("--dir")
            .arg(dir.path().join("demo"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Read the banner, then keep draining the status lines on the same thread.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut banner = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("Press Ctrl-C") => break,
                Ok(line) => banner.push(line),
                Err(e) => {
                    let _ = child.kill();
                    panic!("demo did not start ({e}); printed:\n{}", banner.join("\n"));
                }
            }
        }
        let info = parse_banner(&banner);
        Demo {
            child,
            info,
            _dir: dir,
        }
    }

    /// SIGTERM to one demo agent, which then publishes offline and exits.
    fn stop_agent(&self, id: &str) {
        let pid = self.info.agents[id];
        kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // It did not stop cleanly: do not leave its agents running.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.info.agents.values() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

fn parse_banner(lines: &[String]) -> DemoInfo {
    let all = lines.join("\n");
    let field = |prefix: &str| -> Vec<&str> {
        lines
            .iter()
            .map(|l| l.trim())
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .collect()
    };
    let controller = field("controller")
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no controller line:\n{all}"));
    let url = controller
        .split_whitespace()
        .skip_while(|w| *w != "https")
        .nth(1)
        .unwrap_or_else(|| panic!("no https address:\n{all}"));
    let port: u16 = url
        .strip_prefix("https://localhost:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected URL {url}"));
    let data = PathBuf::from(field("data dir")[0]);
    let agents = field("agent")
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.get(1), Some(&"pid"), "{l}");
            (w[0].to_owned(), w[2].parse().unwrap())
        })
        .collect();
    let sign_in = field("sign in as")[0];
    let admin_password = sign_in
        .split_whitespace()
        .skip_while(|w| *w != "password")
        .nth(1)
        .unwrap_or_else(|| panic!("no one-time password:\n{all}"))
        .to_owned();
    DemoInfo {
        https: SocketAddr::from(([127, 0, 0, 1], port)),
        data,
        agents,
        admin_password,
    }
}

/// Prometheus, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    fn start(config: &Path, storage: &Path) -> Prometheus {
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus ({e}): install it (Debian: apt-get install prometheus)"
                )
            });
        // It logs the address it bound (port 0 picks a free one); keep draining the log.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("level=error") || line.contains("level=warn") {
                    eprintln!("prometheus: {line}");
                }
                let _ = tx.send(line);
            }
        });
        let mut log = Vec::new();
        let addr = loop {
            match rx.recv_timeout(WAIT) {
                Ok(line) => {
                    if line.contains("msg=\"Listening on\"")
                        && let Some(a) = line.split("address=").nth(1)
                    {
                        break a.trim().to_owned();
                    }
                    log.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("prometheus did not start:\n{}", log.join("\n"));
                }
            }
        };
        Prometheus {
            child,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// GET an API path; the `data` of a successful answer.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// An instant query: (labels, value) per series.
    async fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(data) = self.api("/api/v1/query", &[("query", q)]).await else {
            return Vec::new();
        };
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// The devices whose PifleetDeviceOffline alert is in `state` (pending or firing).
    async fn offline_alerts(&self, state: &str) -> Vec<String> {
        let Some(data) = self.api("/api/v1/alerts", &[]).await else {
            return Vec::new();
        };
        let mut devices: Vec<String> = data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == "PifleetDeviceOffline" && a["state"] == state)
            .filter_map(|a| a["labels"]["device"].as_str().map(str::to_owned))
            .collect();
        devices.sort();
        devices
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `text` with every `from` replaced by `to`; fails if `from` is not there, so the test
/// notices when the shipped files change shape.
fn replace_all(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not found");
    text.replace(from, to)
}

/// Writes the deploy files into `dir`, set up as docs/OBSERVABILITY.md describes, for a
/// controller at `localhost:port`; returns the prometheus.yml path.
fn configure(dir: &Path, data: &Path, port: u16) -> PathBuf {
    for f in ["scrape.token", "ca.crt"] {
        std::fs::copy(data.join(f), dir.join(f)).unwrap();
    }
    let mut config = deploy_file("prometheus.yml");
    config = replace_all(
        &config,
        "fleet.example.org:8443",
        &format!("localhost:{port}"),
    );
    config = replace_all(
        &config,
        "/etc/prometheus/pifleet/",
        &format!("{}/", dir.display()),
    );
    config = replace_all(&config, "scrape_interval: 30s", "scrape_interval: 1s");
    config = replace_all(
        &config,
        "evaluation_interval: 30s",
        "evaluation_interval: 1s",
    );
    config = replace_all(&config, "refresh_interval: 1m", "refresh_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();

    let alerts = deploy_file("alerts.yml");
    let at = alerts
        .find("- alert: PifleetDeviceOffline")
        .expect("the offline alert");
    let (head, rest) = alerts.split_at(at);
    let rule_end = rest[1..].find("- alert:").map_or(rest.len(), |i| i + 1);
    let (rule, others) = rest.split_at(rule_end);
    let rule = replace_all(rule, "for: 5m", "for: 3s");
    // The spool-drop group is evaluated every minute of its own: every second here too, or
    // its first evaluation could come after the test's wait.
    let others = replace_all(others, "interval: 1m", "interval: 1s");
    std::fs::write(dir.join("alerts.yml"), format!("{head}{rule}{others}")).unwrap();
    std::fs::write(dir.join("slo.yml"), deploy_file("slo.yml")).unwrap();
    dir.join("prometheus.yml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_demo_and_alerts_on_an_offline_device() {
    let demo = Demo::start();
    let info = &demo.info;
    assert_eq!(info.agents.len(), AGENTS, "{info:?}");

    // The demo's printed one-time password signs in (and must be changed first).
    let api = Api::at(info.https, &info.data.join("ca.crt")).unwrap();
    api.first_login("admin", &info.admin_password, TEST_PASSWORD)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = configure(dir.path(), &info.data, info.https.port());
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool (Debian: apt-get install prometheus)");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let prom = Prometheus::start(&config, &dir.path().join("tsdb"));

    // Discovery finds every demo device, scraped from the controller as its own instance
    // with the labels from discovery; CPU and temperature of each come back from queries.
    let ids: Vec<String> = info.agents.keys().cloned().collect();
    for metric in [
        "pifleet_device_cpu_ratio",
        "pifleet_device_temperature_celsius",
    ] {
        let series = wait_for(WAIT, metric, || {
            let prom = &prom;
            let ids = &ids;
            async move {
                let s = prom.query(metric).await;
                let mut got: Vec<&String> = s.iter().map(|(l, _)| &l["device"]).collect();
                got.sort();
                (got == ids.iter().collect::<Vec<_>>()).then_some(s)
            }
        })
        .await
        .unwrap();
        for (labels, value) in &series {
            assert_eq!(labels["job"], "pifleet-devices", "{labels:?}");
            assert_eq!(labels["instance"], labels["device"], "{labels:?}");
            assert_eq!(labels["label_demo"], "true", "{labels:?}");
            assert!(labels.contains_key("name"), "{labels:?}");
            match metric {
                "pifleet_device_cpu_ratio" => assert!((0.0..=1.0).contains(value), "{value}"),
                _ => assert!(*value > 0.0 && *value < 120.0, "{value}"),
            }
        }
    }

    // The controller's own job, and its view of the fleet.
    let online = wait_for(WAIT, "the controller job", || async {
        let s = prom
            .query("pifleet_devices{job=\"pifleet-controller\",state=\"online\"}")
            .await;
        s.first().map(|(_, v)| *v)
    })
    .await
    .unwrap();
    assert_eq!(online, AGENTS as f64);
    assert_eq!(prom.query("up{job=\"pifleet-controller\"}").await[0].1, 1.0);

    // Every alert and recording rule evaluates cleanly against the real series.
    wait_for(WAIT, "all rules evaluated without error", || async {
        let data = prom.api("/api/v1/rules", &[]).await?;
        let rules: Vec<&Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        // Before its first evaluation a rule's health is "unknown"; "err" is a failure.
        assert!(
            rules.iter().all(|r| r["health"] != "err"),
            "rules failing: {bad:?}"
        );
        (rules.len() > 10 && bad.is_empty()).then_some(())
    })
    .await
    .unwrap();
    assert!(prom.offline_alerts("pending").await.is_empty());
    assert!(prom.offline_alerts("firing").await.is_empty());

    // Stop one agent: its device goes offline, the alert fires for it and no other.
    let stopped = ids[1].clone();
    demo.stop_agent(&stopped);
    let firing = wait_for(WAIT, "PifleetDeviceOffline firing", || async {
        let f = prom.offline_alerts("firing").await;
        (!f.is_empty()).then_some(f)
    })
    .await
    .unwrap();
    assert_eq!(firing, vec![stopped.clone()]);
    let up = prom
        .query(&format!("pifleet_device_up{{device=\"{stopped}\"}}"))
        .await;
    assert_eq!(up[0].1, 0.0, "{up:?}");
    // A stopped device's values are not repeated: its temperature series ends.
    let temps = prom.query("pifleet_device_temperature_celsius").await;
    assert!(
        temps.iter().all(|(l, _)| l["device"] != stopped),
        "{temps:?}"
    );
    assert_eq!(temps.len(), AGENTS - 1, "{temps:?}");
}

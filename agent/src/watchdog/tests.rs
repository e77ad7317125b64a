//! The watchdog loop against a scripted systemd: what it reports, when it starts a unit
//! systemd gave up on, and that a unit it cannot read is retried, never fatal.

use std::collections::HashMap;
use std::sync::Mutex;

use pifleet_shared::codec;
use pifleet_shared::proto::v1;

use super::*;
use crate::apps::health::{SystemdError, UnitStatus};

/// A systemd whose units are what the test says; records starts.
#[derive(Default)]
struct Scripted {
    units: Mutex<HashMap<String, UnitStatus>>,
    starts: Mutex<Vec<String>>,
}

impl Scripted {
    fn set(&self, unit: &str, active: &str, result: &str, restarts: u64) {
        self.units.lock().unwrap().insert(
            unit.into(),
            UnitStatus {
                active_state: active.into(),
                sub_state: String::new(),
                n_restarts: restarts,
                result: result.into(),
            },
        );
    }
}

impl Systemd for Arc<Scripted> {
    async fn restart(&self, _: &str, _: Duration) -> Result<(), SystemdError> {
        Ok(())
    }
    async fn start(&self, unit: &str, _: Duration) -> Result<(), SystemdError> {
        self.starts.lock().unwrap().push(unit.into());
        // It comes up after the start.
        self.set(unit, "active", "success", 0);
        Ok(())
    }
    async fn stop(&self, _: &str, _: Duration) -> Result<(), SystemdError> {
        Ok(())
    }
    async fn show(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        self.units
            .lock()
            .unwrap()
            .get(unit)
            .cloned()
            .ok_or_else(|| SystemdError::Parse(unit.into()))
    }
    async fn journal_tail(&self, _: &str, _: u32) -> Result<String, SystemdError> {
        Ok(String::new())
    }
}

/// Records the events handed to the link.
#[derive(Default)]
struct Recorder(Mutex<Vec<v1::Event>>);

impl Sink for Recorder {
    fn try_send(&self, payload: Vec<u8>) -> bool {
        let ev = codec::decode(Kind::Event, &payload).unwrap();
        self.0.lock().unwrap().push(ev);
        true
    }
}

impl Recorder {
    fn kinds(&self) -> Vec<(String, &'static str)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                v1::Event::Watchdog(u) => Some((u.unit.clone(), u.kind.as_str())),
                _ => None,
            })
            .collect()
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn settings(units: &[&str]) -> Settings {
    Settings {
        poll: Duration::from_millis(20),
        policy: Policy {
            crash_loop_restarts: 3,
            flap_transitions: 100,
            window_ms: 60_000,
            backoff_ms: vec![200],
            max_starts_per_day: 2,
            recovered_after_ms: 100,
        },
        units: units.iter().map(|u| ((*u).to_owned(), None)).collect(),
    }
}

#[tokio::test]
async fn reports_crash_loops_and_starts_what_systemd_gave_up_on_after_the_backoff() {
    let systemd = Arc::new(Scripted::default());
    systemd.set("loop.service", "active", "success", 0);
    systemd.set("limit.service", "failed", "start-limit-hit", 5);
    let rec = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(
        settings(&["loop.service", "limit.service", "missing.service"]),
        systemd.clone(),
        None,
        rec.clone(),
        stop.clone(),
    ));
    // Not before its backoff.
    until("gave_up", || {
        rec.kinds().contains(&("limit.service".into(), "gave_up"))
    })
    .await;
    let gave_up_at = Instant::now();
    assert!(systemd.starts.lock().unwrap().is_empty());
    until("the start", || !systemd.starts.lock().unwrap().is_empty()).await;
    assert!(gave_up_at.elapsed() >= Duration::from_millis(150));
    assert_eq!(*systemd.starts.lock().unwrap(), ["limit.service"]);
    // It stays up: recovered.
    until("recovered", || {
        rec.kinds().contains(&("limit.service".into(), "recovered"))
    })
    .await;
    // systemd restarts the other one three times: one crash loop report.
    systemd.set("loop.service", "active", "success", 3);
    until("crash_loop", || {
        rec.kinds().contains(&("loop.service".into(), "crash_loop"))
    })
    .await;
    systemd.set("loop.service", "active", "success", 9);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kinds = rec.kinds();
    let loops = kinds.iter().filter(|(_, k)| *k == "crash_loop").count();
    assert_eq!(loops, 1, "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .filter(|(u, _)| u == "limit.service")
            .map(|(_, k)| *k)
            .collect::<Vec<_>>(),
        ["gave_up", "starting", "recovered"]
    );
    // The unit that cannot be read was retried all along, and the task still runs.
    assert!(!task.is_finished());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn settings_cover_services_and_app_units_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let text = "device_id = \"pi-01\"\n[controller]\nurl = \"https://c:8443\"\n\
                mqtt_host = \"c\"\nmqtt_port = 8883\n[tls]\nca = \"ca\"\ncert = \"c\"\n\
                key = \"k\"\ncommand_key = \"p\"\n[commands]\n\
                services = [\"kiosk.service\", \"web.service\"]\n\
                [apps.web]\nunit = \"web.service\"\nuser = \"web\"\nguard_window_s = 60\n\
                [watchdog]\npoll_s = 2\nguard_restarts = 4\nguard_span_s = 30\n";
    std::fs::write(&path, text).unwrap();
    let cfg = AgentConfig::load(&path).unwrap();
    let s = Settings::from_config(&cfg).unwrap();
    assert_eq!(s.poll, Duration::from_secs(2));
    let units: Vec<&str> = s.units.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(units, ["web.service", "kiosk.service"]);
    assert_eq!(
        s.units[0].1,
        Some(AppGuard {
            app: "web".into(),
            window_ms: 60_000,
            restarts: 4,
            span_ms: 30_000,
        })
    );
    std::fs::write(&path, format!("{text}enabled = false\n")).unwrap();
    assert!(Settings::from_config(&AgentConfig::load(&path).unwrap()).is_none());
}

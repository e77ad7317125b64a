//! What the dashboard's device page and live view stand on, with a real agent: the agent
//! reports its allowlist (capabilities) and its allowlisted units' states (read through a
//! fake `systemctl show`, and again right after a service command), the device detail
//! serves both; `GET /api/v1/events` streams the fleet totals, the watched device's new
//! samples, its new unit states and its commands' status changes, refuses bad input and unauthenticated clients,
//! and ends when the session does.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::StreamExt;
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, fake_bin, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const UNIT: &str = "kiosk.service";

/// A fake systemctl that keeps the unit's state in a file: `show` prints it in systemd's
/// format, `stop`/`start`/`restart` change it. Shell builtins only: the agent gives programs
/// its configured path (the fakes' directory) as `PATH`.
fn systemctl_body(state: &std::path::Path) -> String {
    format!(
        r#"s='{state}'
[ -f "$s" ] || echo "active running" > "$s"
case "$1" in
  show) read a b < "$s"; set -- "$a" "$b"; printf 'Id={UNIT}\nActiveState=%s\nSubState=%s\n' "$1" "$2" ;;
  stop) echo "inactive dead" > "$s" ;;
  start|restart) echo "active running" > "$s" ;;
esac
"#,
        state = state.display()
    )
}

/// The device detail of `pi-live`.
async fn device(api: &Api, token: &str) -> Option<Value> {
    let r = api.get("/api/v1/devices/pi-live", Some(token)).await.ok()?;
    (r.status == 200).then(|| r.json())
}

/// Reads server-sent events from a streaming response: (event name, JSON data).
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    async fn open(api: &Api, token: &str, devices: &str) -> (u16, Option<Events>) {
        let r = api
            .client
            .get(format!("{}/api/v1/events?devices={devices}", api.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        (
            status,
            Some(Events {
                body: Box::pin(r.bytes_stream()),
                buf: String::new(),
            }),
        )
    }

    /// The next event, or None when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, serde_json::from_str(&data).unwrap()));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// Skips events until `want` matches one; fails after `WAIT`.
    async fn until(&mut self, what: &str, want: impl Fn(&str, &Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let (name, data) = self.next().await.expect("stream ended");
                if want(&name, &data) {
                    return data;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} event within {WAIT:?}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_service_states_and_live_events() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let mut agent = Agent::enroll(&ctl, "pi-live", 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_bin(&tmp.path().join("bin")).unwrap();
    fake.write_script("systemctl", &systemctl_body(&tmp.path().join("unit.state")))
        .unwrap();
    agent
        .set_commands_toml(&format!(
            "[commands]\nservices = [\"{UNIT}\"]\njournal_units = [\"{UNIT}\"]\nreboot = true\npath = \"{}\"\n",
            fake.dir.display()
        ))
        .unwrap();

    // Streams refuse bad input and anonymous clients.
    let (status, _) = Events::open(&api, &admin, "NOT_AN_ID").await;
    assert_eq!(status, 400);
    let (status, _) = Events::open(&api, "not-a-token", "pi-live").await;
    assert_eq!(status, 401);
    let viewer = api.user(&admin, "vera", "viewer").await.unwrap();
    let (status, events) = Events::open(&api, &viewer, "pi-live").await;
    assert_eq!(status, 200, "viewers may watch");
    drop(events);

    let (_, events) = Events::open(&api, &admin, "pi-live").await;
    let mut events = events.unwrap();
    let (name, fleet) = events.next().await.unwrap();
    assert_eq!(name, "fleet", "the totals come first");
    assert_eq!(fleet["enrolled"], 1);
    assert_eq!(fleet["online"], 0);

    agent.start().unwrap();
    // The device comes online: the totals follow, and its samples arrive as device events.
    events
        .until("fleet online", |n, d| n == "fleet" && d["online"] == 1)
        .await;
    let first = events
        .until("device sample", |n, d| {
            n == "device" && d["id"] == "pi-live" && d["cpu_pct"].is_number()
        })
        .await;
    assert_eq!(first["status"], "online");
    assert!(first["alerts"].is_array());
    let seen = first["last_seen"].as_i64().unwrap();
    events
        .until("a newer sample", |n, d| {
            n == "device" && d["last_seen"].as_i64().unwrap_or(0) > seen
        })
        .await;

    // Capabilities and unit states reach the device detail.
    let detail = wait_for(WAIT, "capabilities and services", || async {
        let d = device(&api, &admin).await?;
        (d["capabilities"].is_object() && d["services"].as_array()?.len() == 1).then_some(d)
    })
    .await
    .unwrap();
    let caps = &detail["capabilities"];
    assert_eq!(caps["ping"], true);
    assert_eq!(caps["reboot"], true);
    assert_eq!(caps["services"], json!([UNIT]));
    assert_eq!(caps["journal_units"], json!([UNIT]));
    assert_eq!(caps["set_interval"], Value::Null);
    assert_eq!(
        detail["services"][0],
        json!({ "unit": UNIT, "active": "active", "sub": "running" })
    );

    // A stop command: its status changes stream in, and the unit's new state follows at
    // once (the agent reads it again right after a service command).
    let r = api
        .post(
            "/api/v1/commands",
            Some(&admin),
            &json!({ "devices": ["pi-live"], "action": { "kind": "service", "op": "stop", "unit": UNIT } }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["commands"][0]["id"].as_str().unwrap().to_owned();
    // Its status changes and the unit's new state arrive in either order.
    let (mut done, mut details) = (None, None);
    tokio::time::timeout(WAIT, async {
        while done.is_none() || details.is_none() {
            match events.next().await.expect("stream ended") {
                (n, d)
                    if n == "command" && d["id"] == id.as_str() && d["status"] == "succeeded" =>
                {
                    done = Some(d)
                }
                (n, d) if n == "details" && d["services"][0]["active"] == "inactive" => {
                    details = Some(d)
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the command's result and the unit's new state");
    let (done, details) = (done.unwrap(), details.unwrap());
    assert_eq!(done["device"], "pi-live");
    assert_eq!(details["id"], "pi-live");
    assert_eq!(details["capabilities"]["services"], json!([UNIT]));
    assert!(details["services_at"].as_i64().is_some());
    let d = device(&api, &admin).await.unwrap();
    assert_eq!(d["services"][0]["active"], "inactive");

    // Signing out ends the stream (the session is re-checked every few seconds).
    let r = api
        .post("/api/v1/auth/logout", Some(&admin), &json!({}))
        .await
        .unwrap();
    assert!(r.status < 300, "{}", r.text);
    let ended = tokio::time::timeout(WAIT, async { while events.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the stream outlived the session");
    agent.stop();
}

//! The service watchdog and the guard window end to end, through the real controller and
//! agent: a deploy that commits and then crash-loops within its guard window is rolled back
//! (the previous release is live again, the failed one is never retried on its own, the
//! controller hears of it); a unit systemd gave up on (`start-limit-hit`) is started again by
//! the watchdog after its backoff, and its events are visible through the API; the agent
//! tells systemd it is ready and pings its watchdog on the notify socket. systemd is a fake
//! `systemctl` on the agent's path (the OS boundary); every timer is set to a second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pifleet_controller::commands::deploy::{DeployOptions, deploy_action, deploy_to_device};
use pifleet_controller::commands::dispatch::{Targets, create_commands};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::releases::{self, Input, IntakeOptions};
use pifleet_controller::setup;
use pifleet_controller::store::{ReleaseRow, Store};
use pifleet_shared::command::CommandId;
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, fake_bin, wait_for};
use serde_json::Value;

const DEVICE: &str = "pi-watch";
const WAIT: Duration = Duration::from_secs(60);

/// The fake `systemctl`: `show` prints `state/<unit>` if the test wrote one; the app's
/// unit crash-loops (its restart count climbs on every look) while `current` points at a
/// release for which `state/crash-<release dir>` exists; `start` brings a unit up.
fn systemctl(state: &Path, app_dir: &Path) -> String {
    let (s, a) = (state.display(), app_dir.display());
    format!(
        "for u; do unit=\"$u\"; done\n\
         up='ActiveState=active\\nSubState=running\\nNRestarts=%s\\nResult=success\\n'\n\
         case \"$1\" in\n\
         show)\n\
           cur=$(basename \"$(readlink '{a}/current')\" 2>/dev/null)\n\
           if [ \"$unit\" = demo.service ] && [ -n \"$cur\" ] && [ -e \"{s}/crash-$cur\" ]; then\n\
             n=$(cat '{s}/n' 2>/dev/null || echo 0); n=$((n + 1)); echo $n > '{s}/n'\n\
             printf \"$up\" $n\n\
           elif [ -e \"{s}/$unit\" ]; then cat \"{s}/$unit\"\n\
           else printf \"$up\" 0; fi ;;\n\
         start) printf \"$up\" 0 > \"{s}/$unit\" ;;\n\
         *) echo \"fake systemctl $*\" ;;\n\
         esac\n"
    )
}

async fn release(ctl: &Controller, store: &Store, tmp: &Path, text: &str) -> ReleaseRow {
    let path = tmp.join(format!("{}.tar.gz", text.len()));
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(text.len() as u64);
    tar.append_data(&mut h, "index.html", text.as_bytes())
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let dd = DataDir::new(&ctl.data);
    let new = pifleet_tests::releasekit::quick_release("demo", format!("v{}", text.len()), vec![]);
    let input = Input::Upload {
        path,
        file_name: Some("site.tar.gz".into()),
    };
    let signer = setup::release_signer(&dd).unwrap();
    releases::create_release(&dd, store, &signer, &IntakeOptions::default(), new, input)
        .await
        .unwrap()
}

/// Waits for the command's final status; returns it with its reason.
async fn finished(ctl: &Controller, agent: &Agent, id: CommandId) -> (String, String) {
    let db = ctl.db().await.unwrap();
    let id = id.to_string();
    let r = wait_for(WAIT, "a final command status", || {
        let (db, id) = (db.clone(), id.clone());
        async move {
            let (status, reason): (String, Option<String>) =
                sqlx::query_as("SELECT status, reason FROM commands WHERE id = ?")
                    .bind(&id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            ["succeeded", "failed", "rejected", "expired"]
                .contains(&status.as_str())
                .then(|| (status, reason.unwrap_or_default()))
        }
    })
    .await;
    db.close().await;
    r.unwrap_or_else(|e| panic!("{e}\nagent:\n{}\ncontroller:\n{}", agent.log(), ctl.log()))
}

fn dir_name(row: &ReleaseRow) -> String {
    format!("{}-{}", row.release, &row.archive_sha256[..8])
}

/// The device's watchdog events through the API.
async fn unit_events(api: &Api, token: &str) -> Value {
    let r = api
        .get(
            &format!("/api/v1/devices/{DEVICE}/unit-events"),
            Some(token),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn has_event(events: &Value, unit: &str, kind: &str) -> bool {
    events["events"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["unit"] == unit && e["kind"] == kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_restarts_units_and_the_guard_window_rolls_a_crash_loop_back() {
    let ctl = Controller::start().await.unwrap();
    let mut agent = Agent::enroll(&ctl, DEVICE, 5).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_bin(&tmp.path().join("bin")).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let app_dir = tmp.path().join("apps/demo");
    fake.write_script("systemctl", &systemctl(&state, &app_dir))
        .unwrap();
    // systemd gave up on limit.service before the agent started.
    std::fs::write(
        state.join("limit.service"),
        "ActiveState=failed\nSubState=failed\nNRestarts=5\nResult=start-limit-hit\n",
    )
    .unwrap();
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    agent
        .set_commands_toml(&format!(
            "[commands]\npath = \"{}:/usr/bin:/bin\"\nservices = [\"limit.service\"]\n\n\
             [apps.demo]\nunit = \"demo.service\"\nuser = \"{user}\"\ndir = \"{}\"\n\
             reserve_bytes = 1024\nguard_window_s = 600\n\n\
             [watchdog]\npoll_s = 1\nwindow_s = 60\nbackoff_s = [1]\nrecovered_after_s = 1\n\
             guard_restarts = 3\nguard_span_s = 60\n",
            fake.dir.display(),
            app_dir.display()
        ))
        .unwrap();
    // systemd's notify socket, as `Type=notify` with `WatchdogSec=2` would set it up; read
    // all along, as systemd does.
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let heard = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = notify.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            heard.lock().unwrap().push(msg);
        }
    });
    agent
        .start_with_env(&[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ])
        .unwrap();
    wait_for(WAIT, "READY=1, then WATCHDOG=1", || async {
        let seen = seen.lock().unwrap();
        (seen.first().is_some_and(|m| m == "READY=1") && seen.iter().any(|m| m == "WATCHDOG=1"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", seen.lock().unwrap(), agent.log()));
    wait_for(WAIT, "agent online", || async {
        (ctl.online(DEVICE).await == Some(1)).then_some(())
    })
    .await
    .unwrap();

    // The unit systemd gave up on: started after its backoff, then recovered; all of it
    // visible through the API.
    let api = Api::new(&ctl).unwrap();
    let token = api.admin(&ctl).await.unwrap();
    let events = wait_for(WAIT, "limit.service recovered", || async {
        let ev = unit_events(&api, &token).await;
        has_event(&ev, "limit.service", "recovered").then_some(ev)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\ncontroller:\n{}", agent.log(), ctl.log()));
    for kind in ["gave_up", "starting", "recovered"] {
        assert!(
            has_event(&events, "limit.service", kind),
            "{kind}: {events}"
        );
    }
    assert!(
        fake.calls()
            .iter()
            .any(|c| c == "systemctl start --no-block -- limit.service"),
        "{:?}",
        fake.calls()
    );

    // Release 1, then release 2, both pass their health gate.
    let store = Store::open(&DataDir::new(&ctl.data).database(), false)
        .await
        .unwrap();
    let one = release(&ctl, &store, tmp.path(), "one").await;
    let two = release(&ctl, &store, tmp.path(), "number two").await;
    for r in [&one, &two] {
        let opts = DeployOptions::for_release(r, Duration::from_secs(60));
        let id = deploy_to_device(&store, r, DEVICE, opts).await.unwrap();
        let (status, reason) = finished(&ctl, &agent, id).await;
        assert_eq!(status, "succeeded", "{reason}\n{}", agent.log());
    }
    let current = || {
        std::fs::read_link(app_dir.join("current"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    assert_eq!(current(), Some(dir_name(&two)));

    // Within its guard window, release 2 starts crash-looping: it is rolled back.
    std::fs::write(state.join(format!("crash-{}", dir_name(&two))), "").unwrap();
    wait_for(WAIT, "the guard rollback", || async {
        (current() == Some(dir_name(&one))).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}", agent.log()));
    wait_for(WAIT, "the controller to hear of it", || async {
        ctl.log()
            .lines()
            .any(|l| l.contains("release rolled back in its guard window") && l.contains(DEVICE))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\ncontroller:\n{}", ctl.log()));
    assert_eq!(
        std::fs::read_to_string(app_dir.join("current/index.html")).unwrap(),
        "one"
    );
    assert!(!app_dir.join("releases").join(dir_name(&two)).exists());
    let events = unit_events(&api, &token).await;
    assert!(has_event(&events, "demo.service", "crash_loop"), "{events}");

    // Release 2 failed here: it is not installed again unless a request retries it.
    let id = create_commands(
        &store,
        &Targets::Devices(vec![DEVICE.into()]),
        deploy_action(&two, false).unwrap(),
        Duration::from_secs(600),
        Duration::from_secs(120),
    )
    .await
    .unwrap()[0]
        .0;
    let (status, reason) = finished(&ctl, &agent, id).await;
    assert_eq!(status, "rejected", "{reason}");
    assert!(reason.contains("failed on this device before"), "{reason}");
    assert_eq!(current(), Some(dir_name(&one)));
    store.close().await;
}

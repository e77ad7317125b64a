//! The agent as it ships to Raspberry Pis — the static `agent-release` binaries that
//! `scripts/cross-agent` builds for aarch64 (Pi OS 64-bit) and ARMv6 (Pi OS 32-bit, which every
//! Pi runs, a Zero and a 1 included) — each run under qemu-user, the ARMv6 one on an ARM1176
//! core (a Pi Zero's, which has no ARMv7 instruction), against the real controller:
//! enrollment over HTTPS, telemetry over mutual-TLS MQTT, a signed command whose receipt the
//! controller verifies, and a deploy of a release built for that architecture (and the refusal
//! of one built for another).
//!
//! These need the cross-built binaries and Debian's qemu-user-static, so they are `ignore`d in
//! a plain `cargo test`; scripts/check's "ARM agents" stage builds the binaries and runs them:
//! `scripts/cross-agent && cargo test -p pifleet-tests --test arm_agents -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use pifleet_controller::commands::deploy::{DeployOptions, deploy_to_device};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::releases::{self, Input, IntakeOptions};
use pifleet_controller::setup;
use pifleet_controller::store::{ReleaseRow, Store};
use pifleet_tests::harness::{Agent, AgentExe, Controller, bin_dir, fake_bin, wait_for};
use pifleet_tests::releasekit::{demo_app_toml, quick_release, write_site};

/// Emulated, everything takes longer: TLS handshakes run several times slower.
const WAIT: Duration = Duration::from_secs(120);

/// A board the agent is built for and how it is emulated here.
struct Board {
    /// The Rust target `scripts/cross-agent` builds.
    triple: &'static str,
    /// The emulator and its options.
    runner: &'static [&'static str],
    /// What the agent's hello reports (`std::env::consts::ARCH`).
    hello_arch: &'static str,
    /// What the device's deployer matches release architectures against (`uname -m`).
    uname: &'static str,
}

const AARCH64: Board = Board {
    triple: "aarch64-unknown-linux-musl",
    runner: &["qemu-aarch64-static"],
    hello_arch: "aarch64",
    uname: "aarch64",
};

const ARMV6: Board = Board {
    triple: "arm-unknown-linux-musleabihf",
    runner: &["qemu-arm-static", "-cpu", "arm1176"],
    hello_arch: "arm",
    uname: "armv6l",
};

/// target/TRIPLE/agent-release/pifleet-agent, beside target/debug.
fn cross_agent(triple: &str) -> PathBuf {
    let target = bin_dir().parent().map(PathBuf::from).unwrap_or_default();
    let path = target.join(triple).join("agent-release/pifleet-agent");
    assert!(
        path.exists(),
        "{} not found: build it with `scripts/cross-agent {triple}`",
        path.display()
    );
    path
}

/// A final status of command `id` and its reason.
async fn finished(ctl: &Controller, id: &str) -> (String, String) {
    let db = ctl.db().await.unwrap();
    let row = wait_for(WAIT, "a final command status", || {
        let db = db.clone();
        async move {
            let (status, reason): (String, Option<String>) =
                sqlx::query_as("SELECT status, reason FROM commands WHERE id = ?")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            matches!(
                status.as_str(),
                "succeeded" | "failed" | "rejected" | "expired"
            )
            .then(|| (status, reason.unwrap_or_default()))
        }
    })
    .await;
    db.close().await;
    row.unwrap_or_else(|e| panic!("{e}\ncontroller log:\n{}", ctl.log()))
}

async fn release(
    dd: &DataDir,
    store: &Store,
    dir: &std::path::Path,
    text: &str,
    arch: &str,
) -> ReleaseRow {
    let path = dir.join(format!("{arch}.tar.gz"));
    write_site(&path, text, 64 << 10);
    let signer = setup::release_signer(dd).unwrap();
    let new = quick_release("demo", format!("v-{arch}"), vec![arch.to_owned()]);
    let input = Input::Upload {
        path,
        file_name: Some("site.tar.gz".into()),
    };
    releases::create_release(dd, store, &signer, &IntakeOptions::default(), new, input)
        .await
        .unwrap()
}

async fn check_board(board: Board) {
    let program = cross_agent(board.triple);
    let ctl = Controller::start().await.unwrap();
    let id = format!("pi-{}", board.uname);
    let exe = AgentExe::emulated(board.runner, program);

    // Enrollment: the emulated agent makes its key and CSR and gets its certificate.
    let mut agent = Agent::enroll_with(&ctl, &id, 1, exe).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_bin(&tmp.path().join("bin")).unwrap();
    fake.units_start().unwrap();
    let app_dir = tmp.path().join("apps/demo");
    agent
        .set_commands_toml(&demo_app_toml(&fake, &app_dir))
        .unwrap();

    // Telemetry: online over mutual TLS, its hello names the ARM architecture, samples land.
    agent.start().unwrap();
    let db = ctl.db().await.unwrap();
    let arch = wait_for(WAIT, "the hello and two samples", || {
        let (db, id) = (db.clone(), id.clone());
        async move {
            let (online, arch): (i64, Option<String>) =
                sqlx::query_as("SELECT online, arch FROM devices WHERE id = ?")
                    .bind(&id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            let samples: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM telemetry WHERE device_id = ?")
                    .bind(&id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (online == 1 && samples >= 2).then_some(arch)
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nagent log:\n{}\ncontroller log:\n{}",
            agent.log(),
            ctl.log()
        )
    });
    db.close().await;
    assert_eq!(arch.as_deref(), Some(board.hello_arch));

    // A signed command: verified on the device, its signed receipt verified here.
    ctl.ping(&id, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));

    // A deploy of the release built for this board goes live; one for another does not.
    let dd = DataDir::new(&ctl.data);
    let store = Store::open(&dd.database(), false).await.unwrap();
    let other = release(&dd, &store, tmp.path(), "not for this board", "x86_64").await;
    let opts = DeployOptions::for_release(&other, Duration::from_secs(60));
    let cmd = deploy_to_device(&store, &other, &id, opts).await.unwrap();
    let (status, reason) = finished(&ctl, &cmd.to_string()).await;
    assert_eq!(status, "rejected", "{reason}");
    let why = format!("built for x86_64, this device is {}", board.uname);
    assert!(reason.contains(&why), "{reason}");

    let text = format!("hello from {}", board.uname);
    let mine = release(&dd, &store, tmp.path(), &text, board.uname).await;
    let opts = DeployOptions::for_release(&mine, Duration::from_secs(60));
    let cmd = deploy_to_device(&store, &mine, &id, opts).await.unwrap();
    let (status, reason) = finished(&ctl, &cmd.to_string()).await;
    assert_eq!(status, "succeeded", "{reason}\nagent log:\n{}", agent.log());
    let live = std::fs::read_to_string(app_dir.join("current/index.html")).unwrap();
    assert_eq!(live, text);
    store.close().await;

    // Nothing on the way crashed the emulated process (SIGILL would end it).
    assert!(agent.running(), "agent log:\n{}", agent.log());
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cross-built agent and qemu-user: scripts/check's \"ARM agents\" stage runs it"]
async fn the_aarch64_agent_enrolls_reports_obeys_and_deploys() {
    check_board(AARCH64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cross-built agent and qemu-user: scripts/check's \"ARM agents\" stage runs it"]
async fn the_armv6_agent_enrolls_reports_obeys_and_deploys_on_a_pi_zero_core() {
    check_board(ARMV6).await;
}

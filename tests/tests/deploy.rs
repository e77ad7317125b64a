//! Deploying a release end to end: a release made with `releases::create_release` in the
//! running controller's data dir, a deploy command from `commands::deploy`, the real agent
//! (with `[apps.demo]` allowlisted and a fake `systemctl` whose units start) downloading the
//! signed manifest and the archive over HTTPS with its device certificate, installing and
//! switching `current`. Also deploys the device refuses before accepting them (a manifest
//! digest or archive the controller never made, another architecture, an app that is not
//! allowlisted), the device routes themselves (no certificate, no command, `Range`), and
//! the release key announcement that reaches devices enrolled before releases existed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use pifleet_controller::commands::deploy::{DeployOptions, deploy_action, deploy_to_device};
use pifleet_controller::commands::dispatch::{Targets, create_commands};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::releases::{self, Input, IntakeOptions};
use pifleet_controller::setup;
use pifleet_controller::store::{ReleaseRow, Store};
use pifleet_shared::command::{Action, CommandId};
use pifleet_shared::signing::TrustedKey;
use pifleet_tests::harness::{Agent, Controller, FakeBin, fake_bin, now_ms, wait_for};
use pifleet_tests::https;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const DEVICE: &str = "pi-deploy";

/// A command's status, reason, stdout and stderr as stored.
type CommandRow = (String, Option<String>, Option<Vec<u8>>, Option<Vec<u8>>);
const FINAL: Duration = Duration::from_secs(60);

/// A controller, one enrolled agent allowed to deploy `demo`, and the release tools.
struct Rig {
    ctl: Controller,
    agent: Agent,
    _fake: FakeBin,
    tmp: TempDir,
    dd: DataDir,
    store: Store,
    app_dir: PathBuf,
}

impl Rig {
    async fn new() -> Self {
        let ctl = Controller::start().await.unwrap();
        let agent = Agent::enroll(&ctl, DEVICE, 5).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let fake = fake_bin(&tmp.path().join("bin")).unwrap();
        fake.units_start().unwrap();
        let app_dir = tmp.path().join("apps/demo");
        agent
            .set_commands_toml(&pifleet_tests::releasekit::demo_app_toml(&fake, &app_dir))
            .unwrap();
        let dd = DataDir::new(&ctl.data);
        let store = Store::open(&dd.database(), false).await.unwrap();
        let mut rig = Self {
            ctl,
            agent,
            _fake: fake,
            tmp,
            dd,
            store,
            app_dir,
        };
        rig.start_agent().await;
        rig
    }

    async fn start_agent(&mut self) {
        self.agent.start().unwrap();
        let ctl = &self.ctl;
        wait_for(FINAL, "agent online", || async move {
            (ctl.online(DEVICE).await == Some(1)).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent.log()));
    }

    /// A release of `app` whose archive holds `index.html` with `text` and `data.bin` with
    /// `data` incompressible bytes.
    async fn release(&self, app: &str, text: &str, data: usize, arches: Vec<String>) -> ReleaseRow {
        let path = self.tmp.path().join(format!("{app}-{}.tar.gz", text.len()));
        pifleet_tests::releasekit::write_site(&path, text, data);
        let signer = setup::release_signer(&self.dd).unwrap();
        let new = pifleet_tests::releasekit::quick_release(app, format!("v{}", text.len()), arches);
        let input = Input::Upload {
            path,
            file_name: Some("site.tar.gz".into()),
        };
        releases::create_release(
            &self.dd,
            &self.store,
            &signer,
            &IntakeOptions::default(),
            new,
            input,
        )
        .await
        .unwrap()
    }

    /// Queues `action` for the device as the dispatcher's own helpers do.
    async fn command(&self, action: Action) -> CommandId {
        create_commands(
            &self.store,
            &Targets::Devices(vec![DEVICE.into()]),
            action,
            Duration::from_secs(600),
            Duration::from_secs(120),
        )
        .await
        .unwrap()[0]
            .0
    }

    /// Waits for a final status; returns it with its reason and captured output.
    async fn finished(&self, id: CommandId) -> (String, String, String, String) {
        let db = self.ctl.db().await.unwrap();
        let id = id.to_string();
        let r = wait_for(FINAL, "a final command status", || {
            let (db, id) = (db.clone(), id.clone());
            async move {
                let row: CommandRow = sqlx::query_as(
                    "SELECT status, reason, stdout, stderr FROM commands WHERE id = ?",
                )
                .bind(&id)
                .fetch_one(&db)
                .await
                .ok()?;
                let text = |b: Option<Vec<u8>>| {
                    String::from_utf8_lossy(&b.unwrap_or_default()).into_owned()
                };
                matches!(
                    row.0.as_str(),
                    "succeeded" | "failed" | "rejected" | "expired"
                )
                .then(|| (row.0, row.1.unwrap_or_default(), text(row.2), text(row.3)))
            }
        })
        .await;
        db.close().await;
        r.unwrap_or_else(|e| {
            panic!(
                "{e}\nagent log:\n{}\ncontroller log:\n{}",
                self.agent.log(),
                self.ctl.log()
            )
        })
    }

    /// The release directory `current` points at, if any.
    fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.app_dir.join("current")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    fn live_text(&self) -> String {
        std::fs::read_to_string(self.app_dir.join("current/index.html")).unwrap_or_default()
    }

    fn released(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.app_dir.join("releases"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn dir_name(row: &ReleaseRow) -> String {
    format!("{}-{}", row.release, &row.archive_sha256[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_deploy_installs_the_release_and_bad_ones_change_nothing() {
    let mut rig = Rig::new().await;

    // Release 1 goes live.
    let one = rig
        .release(
            "demo",
            "hello, one",
            1000,
            vec![std::env::consts::ARCH.into()],
        )
        .await;
    let opts = DeployOptions::for_release(&one, Duration::from_secs(60));
    let id = deploy_to_device(&rig.store, &one, DEVICE, opts)
        .await
        .unwrap();
    let (status, reason, stdout, _) = rig.finished(id).await;
    assert_eq!(status, "succeeded", "{reason}\n{}", rig.agent.log());
    assert!(stdout.contains("is live"), "{stdout}");
    assert_eq!(rig.current(), Some(dir_name(&one)));
    assert_eq!(rig.live_text(), "hello, one");
    // The download is gone once installed; progress went out while it ran.
    let downloads = std::fs::read_dir(rig.app_dir.join("downloads"))
        .unwrap()
        .count();
    assert_eq!(downloads, 0);
    let log = rig.ctl.log();
    for phase in ["downloading", "installing"] {
        assert!(
            log.lines()
                .any(|l| l.contains("deploy progress") && l.contains(phase)),
            "no {phase} progress in:\n{log}"
        );
    }

    // Refused before acceptance, each with nothing changed: a manifest digest the
    // controller never made, an archive the manifest does not name, another machine, an
    // app this device does not allowlist.
    let two = rig
        .release("demo", "hello, number two", 3 << 20, vec![])
        .await;
    let mut tampered = deploy_action(&two, false).unwrap();
    if let Action::Deploy {
        manifest_sha256, ..
    } = &mut tampered
    {
        manifest_sha256[0] ^= 1;
    }
    let mut other_archive = deploy_action(&two, false).unwrap();
    if let Action::Deploy { archive_sha256, .. } = &mut other_archive {
        archive_sha256[5] ^= 0x80;
    }
    let elsewhere = rig
        .release("demo", "hello, far away", 10, vec!["s390x".into()])
        .await;
    let stranger = rig
        .release("other", "not for this device", 10, vec![])
        .await;
    let cases = [
        (tampered, "no manifest to install"),
        (other_archive, "archive is not the one the command names"),
        (
            deploy_action(&elsewhere, false).unwrap(),
            "the release is built for s390x",
        ),
        (
            deploy_action(&stranger, false).unwrap(),
            "agent.toml has no [apps.other]",
        ),
    ];
    for (action, why) in cases {
        let id = rig.command(action).await;
        let (status, reason, _, _) = rig.finished(id).await;
        assert_eq!(status, "rejected", "{why}: {reason}");
        assert!(reason.contains(why), "{why}: {reason}");
        assert_eq!(rig.current(), Some(dir_name(&one)));
        assert_eq!(rig.released(), [dir_name(&one)]);
        assert_eq!(rig.live_text(), "hello, one");
    }

    // Release 2 (3 MiB) replaces it, resuming a download an earlier attempt left half done;
    // release 1 is kept for a rollback.
    let stored = std::fs::read(rig.dd.release_archive(&hex32(&two.archive_sha256))).unwrap();
    let half = stored.len() / 2;
    let partial = rig
        .app_dir
        .join("downloads")
        .join(format!("{}.tar.gz", dir_name(&two)));
    std::fs::write(&partial, &stored[..half]).unwrap();
    let opts = DeployOptions::for_release(&two, Duration::from_secs(60));
    let id = deploy_to_device(&rig.store, &two, DEVICE, opts)
        .await
        .unwrap();
    let (status, reason, _, _) = rig.finished(id).await;
    assert_eq!(status, "succeeded", "{reason}");
    assert_eq!(rig.current(), Some(dir_name(&two)));
    assert_eq!(rig.live_text(), "hello, number two");
    assert_eq!(rig.released(), [dir_name(&one), dir_name(&two)]);
    assert!(!partial.exists());
    let resumed = format!("\"start\":{half}");
    assert!(
        rig.ctl
            .log()
            .lines()
            .any(|l| l.contains("release archive sent") && l.contains(&resumed)),
        "no archive sent from byte {half}:\n{}",
        rig.ctl.log()
    );

    // A rollback goes back to the kept release without a download.
    let back = Action::Rollback {
        app: "demo".into(),
        release: one.release,
        manifest_sha256: hex32(&one.manifest_sha256),
    };
    let id = rig.command(back).await;
    let (status, reason, _, _) = rig.finished(id).await;
    assert_eq!(status, "succeeded", "{reason}");
    assert_eq!(rig.current(), Some(dir_name(&one)));
    assert_eq!(rig.live_text(), "hello, one");

    // The download routes, with the agent stopped and a deploy of release 2 marked sent
    // by hand (so nothing else downloads meanwhile).
    rig.agent.stop();
    let id = rig.command(deploy_action(&two, false).unwrap()).await;
    let db = rig.ctl.db_rw().await.unwrap();
    sqlx::query("UPDATE commands SET status = 'sent', sent_at = ? WHERE id = ?")
        .bind(now_ms())
        .bind(id.to_string())
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    download_routes(&rig, &one, &two).await;
}

/// The device routes: only a device certificate, only a release it has a deploy command
/// in progress for, `Range` answered with 206 or 416.
async fn download_routes(rig: &Rig, done: &ReleaseRow, sent: &ReleaseRow) {
    let (ca, addr) = (rig.ctl.ca_path(), rig.ctl.https);
    let device = Some((rig.agent.cert(), rig.agent.key()));
    let device = device.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let manifest = format!("/api/v1/device/releases/{}/manifest", sent.manifest_sha256);
    let archive = format!("/api/v1/device/releases/{}/archive", sent.manifest_sha256);
    let stored = std::fs::read(rig.dd.release_archive(&hex32(&sent.archive_sha256))).unwrap();
    assert_eq!(stored.len() as u64, sent.archive_size);

    // No certificate: refused, whatever else the request carries.
    for headers in [vec![], vec![("authorization", "Bearer pfa1.not-a-device")]] {
        for path in [&manifest, &archive] {
            let r = https::get(&ca, addr, path, &headers, None).await.unwrap();
            assert_eq!(
                r.status,
                401,
                "{path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.content_type, "application/problem+json");
        }
    }

    let r = https::get(&ca, addr, &manifest, &[], device).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type, "application/octet-stream");
    assert_eq!(hex(&Sha256::digest(&r.body)), sent.manifest_sha256);

    let r = https::get(&ca, addr, &archive, &[], device).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), "bytes");
    assert_eq!(&r.body[..], &stored[..]);

    let r = https::get(&ca, addr, &archive, &[("range", "bytes=10-19")], device)
        .await
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        format!("bytes 10-19/{}", stored.len())
    );
    assert_eq!(&r.body[..], &stored[10..20]);
    let tail = format!("bytes={}-", stored.len() - 7);
    let r = https::get(&ca, addr, &archive, &[("range", tail.as_str())], device)
        .await
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &stored[stored.len() - 7..]);

    let past = format!("bytes={}-", stored.len());
    for bad in [past.as_str(), "bytes=5-1", "bytes=0-1,4-5", "lines=1-2"] {
        let r = https::get(&ca, addr, &archive, &[("range", bad)], device)
            .await
            .unwrap();
        assert_eq!(r.status, 416, "{bad}");
        assert_eq!(
            r.header("content-range"),
            format!("bytes */{}", stored.len())
        );
    }

    // A release this device has no deploy command in progress for: its deploy finished.
    let finished = format!("/api/v1/device/releases/{}/manifest", done.manifest_sha256);
    let r = https::get(&ca, addr, &finished, &[], device).await.unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let junk = https::get(
        &ca,
        addr,
        "/api/v1/device/releases/abc/archive",
        &[],
        device,
    )
    .await
    .unwrap();
    assert_eq!(junk.status, 400);
}

/// A device enrolled before releases existed (no release keys, no `release_keys` line)
/// learns them from the controller's announcement after a restart, confirms them once,
/// and can then deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_enrolled_before_releases_learn_the_release_keys() {
    let ctl = Controller::start().await.unwrap();
    let mut agent = Agent::enroll(&ctl, DEVICE, 5).unwrap();
    let keys_file = agent.dir.join("release-keys.pem");
    std::fs::remove_file(&keys_file).unwrap();
    let toml = std::fs::read_to_string(agent.config()).unwrap();
    let old: String = toml
        .lines()
        .filter(|l| !l.starts_with("release_keys"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(old, toml, "enroll writes release_keys");
    std::fs::write(agent.config(), old).unwrap();
    // Nor did the controller record, at that enrollment, that the device has the keys.
    let db = ctl.db_rw().await.unwrap();
    sqlx::query("DELETE FROM release_key_acks WHERE device_id = ?")
        .bind(DEVICE)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    agent.set_backoff_max(1).unwrap();
    agent.start().unwrap();
    let mut ctl = ctl;
    wait_for(FINAL, "agent online", || {
        let ctl = &ctl;
        async move { (ctl.online(DEVICE).await == Some(1)).then_some(()) }
    })
    .await
    .unwrap();

    // The restart announces the keys; the device writes them and confirms.
    ctl.stop();
    ctl.serve().await.unwrap();
    let release_pub =
        TrustedKey::from_pem(&std::fs::read_to_string(ctl.data.join("release.pub")).unwrap())
            .unwrap();
    wait_for(FINAL, "the announcement to succeed", || async {
        trust_statuses(&ctl).await.filter(|s| s == &["succeeded"])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), ctl.log()));
    let pinned = TrustedKey::all_from_pem(&std::fs::read_to_string(&keys_file).unwrap()).unwrap();
    assert_eq!(pinned, std::slice::from_ref(&release_pub));
    let db = ctl.db().await.unwrap();
    let acked: Vec<String> =
        sqlx::query_scalar("SELECT key_id FROM release_key_acks WHERE device_id = ?")
            .bind(DEVICE)
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(acked, [release_pub.id.to_string()]);

    // Confirmed: the next start announces nothing.
    ctl.stop();
    ctl.serve().await.unwrap();
    wait_for(FINAL, "the announcement check", || async {
        ctl.log()
            .contains("every device trusts the release keys")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(trust_statuses(&ctl).await.unwrap(), ["succeeded"]);
}

/// The statuses of every release key announcement.
async fn trust_statuses(ctl: &Controller) -> Option<Vec<String>> {
    let db = ctl.db().await.ok()?;
    let s = sqlx::query_scalar(
        "SELECT status FROM commands WHERE action_kind = 'trust_release_keys' ORDER BY created_at",
    )
    .fetch_all(&db)
    .await
    .ok();
    db.close().await;
    s
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

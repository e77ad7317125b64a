//! Rollouts end to end: a real controller, real agents (each with `[apps.web]` allowlisted
//! and a fake `systemctl` whose unit fails while the live release holds a file `fail`),
//! rollouts made and steered with the command line. A failing canary pauses the rollout
//! and leaves the rest untouched; an abort reverts the devices already updated; a device
//! offline during its batch is updated when it returns, across a controller killed and
//! restarted mid-rollout; a device that never returns ends `unreachable` and the rollout
//! completes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pifleet_controller::datadir::DataDir;
use pifleet_controller::releases::{self, Input, IntakeOptions, NewRelease};
use pifleet_controller::setup;
use pifleet_controller::store::{ReleaseRow, Store};
use pifleet_shared::release::HealthSpec;
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Agent, Controller, FakeBin, fake_bin, wait_for};
use tempfile::TempDir;

const LONG: Duration = Duration::from_secs(90);

/// One agent and what the test sees of it.
struct Device {
    id: String,
    agent: Agent,
    app_dir: PathBuf,
    _fake: FakeBin,
}

impl Device {
    /// The release directory `current` points at (`<release>-<digest8>`), if any.
    fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.app_dir.join("current")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }
}

struct Rig {
    ctl: Controller,
    devices: Vec<Device>,
    tmp: TempDir,
    dd: DataDir,
    store: Store,
}

/// A fake `systemctl` whose units are active unless the app's live release holds `fail`.
fn flaky_systemctl(fake: &FakeBin, app_dir: &Path) {
    fake.write_script(
        "systemctl",
        &format!(
            "case \"$1\" in\n\
             show) if [ -e '{}/current/fail' ]; then \
             printf 'ActiveState=failed\\nSubState=failed\\nNRestarts=0\\nResult=exit-code\\n'; \
             else printf 'ActiveState=active\\nSubState=running\\nNRestarts=0\\nResult=success\\n'; fi ;;\n\
             *) echo \"fake systemctl $*\" ;;\n\
             esac\n",
            app_dir.display()
        ),
    )
    .unwrap();
}

impl Rig {
    async fn new(n: usize) -> Self {
        let ctl = Controller::start_with(
            "[rollouts]\npoll_ms = 300\nsettle_ms = 20\n[commands]\npoll_ms = 200\nresend_ms = 2000\n",
        )
        .await
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        let mut devices = Vec::new();
        for i in 0..n {
            let id = format!("pi-{i:02}");
            let agent = Agent::enroll(&ctl, &id, 5).unwrap();
            agent.set_backoff_max(1).unwrap();
            let fake = fake_bin(&tmp.path().join(format!("bin-{i}"))).unwrap();
            let app_dir = tmp.path().join(format!("apps-{i}/web"));
            flaky_systemctl(&fake, &app_dir);
            agent
                .set_commands_toml(&format!(
                    "[commands]\npath = \"{}\"\n\n[apps.web]\nunit = \"web.service\"\n\
                     user = \"{user}\"\ndir = \"{}\"\nreserve_bytes = 1024\n",
                    fake.dir.display(),
                    app_dir.display()
                ))
                .unwrap();
            devices.push(Device {
                id,
                agent,
                app_dir,
                _fake: fake,
            });
        }
        let dd = DataDir::new(&ctl.data);
        let store = Store::open(&dd.database(), false).await.unwrap();
        let mut rig = Self {
            ctl,
            devices,
            tmp,
            dd,
            store,
        };
        for i in 0..n {
            rig.devices[i].agent.start().unwrap();
        }
        for i in 0..n {
            rig.wait_apps_reported(i).await;
        }
        rig
    }

    /// Waits until device `i` is online and its agent reported its apps.
    async fn wait_apps_reported(&self, i: usize) {
        let db = self.ctl.db().await.unwrap();
        let id = self.devices[i].id.clone();
        let r = wait_for(LONG, "the agent's apps", || {
            let (db, id) = (db.clone(), id.clone());
            async move {
                let apps: Option<String> =
                    sqlx::query_scalar("SELECT apps FROM devices WHERE id = ? AND online = 1")
                        .bind(&id)
                        .fetch_optional(&db)
                        .await
                        .ok()
                        .flatten();
                apps.filter(|a| a.contains("\"web\"")).map(|_| ())
            }
        })
        .await;
        db.close().await;
        r.unwrap_or_else(|e| panic!("{e}\n{}", self.devices[i].agent.log()));
    }

    /// A release of `web` with `index.html` = `text`, and a file `fail` when `fails`.
    async fn release(&self, text: &str, fails: bool) -> ReleaseRow {
        let path = self.tmp.path().join(format!("web-{}.tar.gz", text.len()));
        self.make(
            text,
            Input::Upload {
                path: self.tar(&path, text, fails),
                file_name: None,
            },
        )
        .await
    }

    /// `web-N.tar.gz` holding `index.html` = `text` (and `fail`).
    fn tar(&self, path: &Path, text: &str, fails: bool) -> PathBuf {
        {
            let file = std::fs::File::create(path).unwrap();
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
            let mut tar = tar::Builder::new(gz);
            let mut files = vec![("index.html", text)];
            if fails {
                files.push(("fail", "this release does not start\n"));
            }
            for (name, body) in files {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(body.len() as u64);
                tar.append_data(&mut h, name, body.as_bytes()).unwrap();
            }
            tar.into_inner().unwrap().finish().unwrap();
        }
        path.to_owned()
    }

    /// A release of `web` uploaded as a zip holding `index.html` = `text`.
    async fn zip_release(&self, text: &str) -> ReleaseRow {
        use std::io::Write;
        let path = self.tmp.path().join(format!("web-{}.zip", text.len()));
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        w.start_file("index.html", opts).unwrap();
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap();
        self.make(
            text,
            Input::Upload {
                path,
                file_name: Some("web.zip".into()),
            },
        )
        .await
    }

    /// A release of `web` made from a commit of a git repository holding `index.html`.
    async fn git_release(&self, text: &str) -> ReleaseRow {
        let repo = self.tmp.path().join(format!("repo-{}", text.len()));
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(repo.join("index.html"), text).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(&repo)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        git(&["init", "-q"]);
        git(&["add", "index.html"]);
        git(&["commit", "-q", "-m", text]);
        let rev = git(&["rev-parse", "HEAD"]).trim().to_owned();
        let url = format!("file://{}", repo.display());
        self.make(text, Input::Git { url, rev }).await
    }

    async fn make(&self, text: &str, input: Input) -> ReleaseRow {
        let new = NewRelease {
            app: "web".into(),
            version: text.into(),
            arches: vec![],
            health: HealthSpec {
                start_timeout_s: 2,
                soak_s: 1,
                probe: None,
                probe_passes: 1,
                probe_interval_s: 1,
            },
            hooks: vec![],
            created_by: "test".into(),
        };
        let signer = setup::release_signer(&self.dd).unwrap();
        let mut opts = IntakeOptions::default();
        opts.git.allow_file_urls = true;
        releases::create_release(&self.dd, &self.store, &signer, &opts, new, input)
            .await
            .unwrap()
    }

    /// Runs the controller's command line; its stdout, or a panic with stderr.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.ctl.cli(args).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `rollout create` of `release` to the listed devices; returns the rollout's id.
    fn rollout(&self, release: &ReleaseRow, devices: &[usize], extra: &[&str]) -> i64 {
        let rel = release.id.to_string();
        let mut args = vec!["rollout", "create", "--release", &rel, "--json"];
        for &i in devices {
            args.extend(["--device", &self.devices[i].id]);
        }
        args.extend(extra);
        let v: serde_json::Value = serde_json::from_str(&self.cli(&args)).unwrap();
        v["rollout"]["rollout"]["id"].as_i64().unwrap()
    }

    async fn show(&self, id: i64) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["rollout", "show", &id.to_string(), "--json"])).unwrap()
    }

    /// Waits until `check` holds on the rollout's detail; returns it.
    async fn until(
        &self,
        id: i64,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = std::time::Instant::now();
        loop {
            let v = self.show(id).await;
            if check(&v) {
                return v;
            }
            if start.elapsed() > LONG {
                let logs: String = self
                    .devices
                    .iter()
                    .map(|d| format!("--- {}\n{}", d.id, d.agent.log()))
                    .collect();
                panic!(
                    "rollout {id}: {what} did not happen:\n{v:#}\ncontroller:\n{}\n{logs}",
                    self.ctl.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn status(v: &serde_json::Value) -> &str {
    v["rollout"]["status"].as_str().unwrap_or_default()
}

fn device_state<'a>(v: &'a serde_json::Value, id: &str) -> &'a str {
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == id)
        .and_then(|d| d["state"].as_str())
        .unwrap_or_default()
}

fn count(v: &serde_json::Value, state: &str) -> i64 {
    v["rollout"]["counts"][state].as_i64().unwrap_or(0)
}

fn dir_name(r: &ReleaseRow) -> String {
    format!("{}-{}", r.release, &r.archive_sha256[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_the_rollout_and_an_abort_reverts_what_was_updated() {
    let mut rig = Rig::new(10).await;
    let all: Vec<usize> = (0..10).collect();

    // Release 1 to all ten in one batch: all healthy.
    let one = rig.release("one", false).await;
    let id = rig.rollout(&one, &all, &["--canary", "0", "--batches", "100"]);
    let v = rig
        .until(id, "completed", |v| status(v) == "completed")
        .await;
    assert_eq!(count(&v, "healthy"), 10, "{v:#}");
    for d in &rig.devices {
        assert_eq!(d.current(), Some(dir_name(&one)), "{}", d.id);
    }

    // Release 2 fails its health gate: the canary rolls back, the rollout pauses, and the
    // other nine are never sent it.
    let two = rig.release("two", true).await;
    let id = rig.rollout(&two, &all, &["--canary", "1", "--batches", "50,100"]);
    let v = rig.until(id, "paused", |v| status(v) == "paused").await;
    assert_eq!(v["rollout"]["pause_cause"], "batch_failed", "{v:#}");
    let canary = &v["devices"][0];
    assert_eq!(canary["state"], "rolled_back", "{v:#}");
    assert!(
        canary["reason"]
            .as_str()
            .unwrap()
            .starts_with("rolled_back"),
        "{canary:#}"
    );
    assert_eq!(count(&v, "pending"), 9, "{v:#}");
    for d in &rig.devices {
        assert_eq!(
            d.current(),
            Some(dir_name(&one)),
            "{} keeps release 1",
            d.id
        );
    }
    let db = rig.ctl.db().await.unwrap();
    let sent: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM commands WHERE action_kind = 'deploy' AND action LIKE '%\"release\":2%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(sent, 1, "only the canary was sent release 2");
    // Prometheus sees a rollout paused by its health rules (what PifleetRolloutPaused
    // alerts on).
    let api = Api::new(&rig.ctl).unwrap();
    let token = std::fs::read_to_string(rig.ctl.data.join("scrape.token")).unwrap();
    let paused = r#"pifleet_rollouts{pause_cause="batch_failed",status="paused"} 1"#;
    wait_for(LONG, "the paused rollout's gauge", || {
        let api = api.clone();
        let token = token.trim().to_owned();
        async move {
            let r = api.get("/metrics", Some(&token)).await.ok()?;
            r.text.lines().any(|l| l == paused).then_some(())
        }
    })
    .await
    .unwrap();
    rig.cli(&["rollout", "abort", &id.to_string()]);
    assert_eq!(status(&rig.show(id).await), "aborted");

    // Release 3 with pi-04 offline: the canary and three of batch 2 (pi-01…pi-04) go
    // healthy, pi-04 waits for its delivery; an abort with revert sends the four back to
    // release 1, withdraws pi-04's deploy and leaves the last batch untouched.
    let three = rig.release("three", false).await;
    rig.devices[4].agent.stop();
    let id = rig.rollout(&three, &all, &["--canary", "1", "--batches", "50,100"]);
    let v = rig
        .until(id, "batch 2 waiting for pi-04", |v| {
            count(v, "healthy") == 4 && device_state(v, "pi-04") == "queued"
        })
        .await;
    assert_eq!(v["rollout"]["status"], "running", "{v:#}");
    let out = rig.cli(&["rollout", "abort", &id.to_string(), "--revert"]);
    assert!(out.contains("aborted"), "{out}");
    let v = rig
        .until(id, "reverted", |v| count(v, "reverted") == 4)
        .await;
    assert_eq!(device_state(&v, "pi-04"), "untouched", "{v:#}");
    assert_eq!(count(&v, "untouched"), 6, "{v:#}");
    for d in &rig.devices {
        assert_eq!(
            d.current(),
            Some(dir_name(&one)),
            "{} is back on release 1",
            d.id
        );
    }
    let withdrawn: String = sqlx::query_scalar(
        "SELECT status FROM commands WHERE device_id = 'pi-04' AND action LIKE '%\"release\":3%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(withdrawn, "cancelled");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_and_git_releases_reach_offline_devices_when_they_return_and_lost_ones_end_unreachable()
{
    let mut rig = Rig::new(3).await;
    // Release 1 is uploaded as a zip, release 2 made from a git commit.
    let one = rig.zip_release("one").await;

    // pi-02 is offline when the rollout starts; the controller is killed and restarted
    // while the rollout waits for it; it comes back and gets the release.
    rig.devices[2].agent.stop();
    let id = rig.rollout(&one, &[0, 1, 2], &["--canary", "0", "--batches", "100"]);
    let v = rig
        .until(id, "two healthy", |v| count(v, "healthy") == 2)
        .await;
    assert_eq!(device_state(&v, "pi-02"), "queued");
    rig.ctl.kill9();
    rig.ctl.serve().await.unwrap();
    rig.devices[2].agent.start().unwrap();
    let v = rig
        .until(id, "completed", |v| status(v) == "completed")
        .await;
    assert_eq!(count(&v, "healthy"), 3, "{v:#}");
    assert_eq!(rig.devices[2].current(), Some(dir_name(&one)));

    // pi-01 never comes back: after its delivery deadline it is unreachable and the
    // rollout completes without it.
    let two = rig.git_release("two").await;
    rig.devices[1].agent.stop();
    let id = rig.rollout(
        &two,
        &[0, 1, 2],
        &[
            "--canary",
            "0",
            "--batches",
            "100",
            "--delivery-deadline",
            "3",
        ],
    );
    let v = rig
        .until(id, "completed", |v| status(v) == "completed")
        .await;
    assert_eq!(count(&v, "healthy"), 2, "{v:#}");
    assert_eq!(device_state(&v, "pi-01"), "unreachable", "{v:#}");
    assert_eq!(
        v["rollout"]["reason"], "completed: 2 healthy, 1 unreachable",
        "{v:#}"
    );
    assert_eq!(rig.devices[1].current(), Some(dir_name(&one)));
    for i in [0, 2] {
        assert_eq!(rig.devices[i].current(), Some(dir_name(&two)));
        let live = std::fs::read_to_string(rig.devices[i].app_dir.join("current/index.html"));
        assert_eq!(live.unwrap(), "two", "the git commit's content is live");
    }
}

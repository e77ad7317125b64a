//! Signed remote commands end to end: `pifleet-controller cmd send` → the running
//! controller's dispatcher → the agent (fake `systemctl`/`journalctl`/`reboot` in its
//! `[commands] path`) → a signed receipt → the `commands` row in SQLite. Also refusals,
//! offline delivery and expiry, an agent killed mid-command, and a compromised broker
//! (Debian's mosquitto) injecting forged, altered, expired, replayed and hostile commands.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pifleet_shared::command::{Action, CommandId, Outcome, ServiceOp};
use pifleet_shared::signing::CommandSigner;
use pifleet_shared::topic::Kind;
use pifleet_tests::harness::{Agent, Controller, FAKE_JOURNAL, FakeBin, bin, fake_bin, wait_for};
use pifleet_tests::mosquitto::{Attacker, Broker, envelope, other_signer, service, wire};
use rumqttc::QoS;
use sqlx::Row;
use tempfile::TempDir;

/// How long a command may take to reach a final state.
const FINAL: Duration = Duration::from_secs(20);
const UNIT: &str = "kiosk.service";

/// A controller, one enrolled agent with fake executables, and their temp dirs.
struct Fleet {
    ctl: Controller,
    agent: Agent,
    fake: FakeBin,
    _tmp: TempDir,
}

/// The `[commands]` section used by the tests: `kiosk.service` allowlisted, a `report`
/// script with one declared argument, and `extra` lines (`reboot = true`, …).
fn commands_toml(fake: &FakeBin, extra: &str, scripts: &str) -> String {
    let report = fake.dir.join("report.sh");
    format!(
        r#"[commands]
ping = true
services = ["{UNIT}"]
journal_units = ["{UNIT}"]
min_interval_s = 2
max_interval_s = 60
timeout_s = 600
journal_max_lines = 200
path = "{path}"
{extra}

[commands.scripts.report]
argv = ["{report}", "--quiet"]
allowed_args = ["--full"]
{scripts}
"#,
        path = fake.dir.display(),
        report = report.display(),
    )
}

/// Enrolls `id`, writes the fakes and the `[commands]` section; starts the agent when `start`.
async fn fleet(id: &str, extra: &str, scripts: &str, start: bool) -> Fleet {
    let ctl = Controller::start().await.unwrap();
    let agent = Agent::enroll(&ctl, id, 5).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_bin(&tmp.path().join("bin")).unwrap();
    fake.write_script("report.sh", "echo \"report: $*\"\n")
        .unwrap();
    agent
        .set_commands_toml(&commands_toml(&fake, extra, scripts))
        .unwrap();
    let mut f = Fleet {
        ctl,
        agent,
        fake,
        _tmp: tmp,
    };
    if start {
        f.start_agent().await;
    }
    f
}

impl Fleet {
    async fn start_agent(&mut self) {
        self.agent.start().unwrap();
        let (ctl, id) = (&self.ctl, self.agent.id.clone());
        wait_for(FINAL, "agent online", || {
            let id = id.clone();
            async move { (ctl.online(&id).await == Some(1)).then_some(()) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.agent.log()));
    }

    /// `cmd send --device <agent> [extra…] ACTION…`; returns the raw output.
    fn send_raw(&self, extra: &[&str], action: &[&str]) -> std::process::Output {
        Command::new(bin("pifleet-controller").unwrap())
            .args(["cmd", "send", "--data-dir"])
            .arg(&self.ctl.data)
            .args(["--device", &self.agent.id])
            .args(extra)
            .args(action)
            .output()
            .unwrap()
    }

    /// Queues `action` through the CLI; returns the command id it printed.
    fn send(&self, extra: &[&str], action: &[&str]) -> String {
        let out = self.send_raw(extra, action);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cmd send {action:?}: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().next().unwrap_or_default();
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "output line {line:?}");
        assert_eq!(fields[1], self.agent.id);
        assert_eq!(fields[2], "queued");
        assert!(CommandId::parse(fields[0]).is_some(), "id {:?}", fields[0]);
        fields[0].to_owned()
    }

    async fn row(&self, id: &str) -> Option<CmdRow> {
        let db = self.ctl.db().await.ok()?;
        let r = sqlx::query(
            "SELECT status, reason, exit_code, stdout, stdout_len, stdout_sha256 \
             FROM commands WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&db)
        .await
        .ok()
        .flatten();
        db.close().await;
        let r = r?;
        Some(CmdRow {
            status: r.get("status"),
            reason: r.get("reason"),
            exit_code: r.get("exit_code"),
            stdout: r.get::<Option<Vec<u8>>, _>("stdout"),
            stdout_len: r.get("stdout_len"),
            stdout_sha256: r.get("stdout_sha256"),
        })
    }

    /// Waits until the command's row has one of `statuses`.
    async fn wait_status(&self, id: &str, statuses: &[&str]) -> CmdRow {
        wait_for(FINAL, &format!("command {id} in {statuses:?}"), || async {
            self.row(id)
                .await
                .filter(|r| statuses.contains(&r.status.as_str()))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nagent log:\n{}\ncontroller log:\n{}",
                self.agent.log(),
                self.ctl.log()
            )
        })
    }

    /// Waits until the command's row is final.
    async fn wait_final(&self, id: &str) -> CmdRow {
        self.wait_status(
            id,
            &["succeeded", "failed", "rejected", "expired", "cancelled"],
        )
        .await
    }

    /// Sends `action`, waits for it to succeed, checks stdout (length and hash too) and
    /// exit code, and returns the row.
    async fn succeeds(&self, action: &[&str], stdout: &[u8], exit_code: Option<i64>) -> CmdRow {
        let id = self.send(&[], action);
        let row = self.wait_final(&id).await;
        assert_eq!(row.status, "succeeded", "{action:?}: {row:?}");
        assert_eq!(row.reason, None, "{action:?}");
        assert_eq!(row.exit_code, exit_code, "{action:?}: exit code");
        assert_eq!(
            row.stdout.as_deref().unwrap_or_default(),
            stdout,
            "{action:?}: stdout"
        );
        assert_eq!(row.stdout_len, Some(stdout.len() as i64), "{action:?}");
        assert_eq!(
            row.stdout_sha256.as_deref(),
            Some(sha256_hex(stdout).as_str()),
            "{action:?}: stdout_sha256"
        );
        row
    }

    /// Sends `action` and waits for it to be rejected with a reason starting with `prefix`.
    async fn rejected(&self, action: &[&str], prefix: &str) -> CmdRow {
        let id = self.send(&[], action);
        let row = self.wait_final(&id).await;
        assert_eq!(row.status, "rejected", "{action:?}: {row:?}");
        let reason = row.reason.clone().unwrap_or_default();
        assert!(
            reason.starts_with(prefix),
            "{action:?}: reason {reason:?} should start with {prefix:?}"
        );
        row
    }

    async fn command_count(&self) -> i64 {
        let db = self.ctl.db().await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM commands")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        n
    }
}

#[derive(Debug, Clone)]
struct CmdRow {
    status: String,
    reason: Option<String>,
    exit_code: Option<i64>,
    stdout: Option<Vec<u8>>,
    stdout_len: Option<i64>,
    stdout_sha256: Option<String>,
}

/// SHA-256 in lowercase hex, computed by coreutils' `sha256sum` (independent of the code
/// under test).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// 1. Every action succeeds for an allowlisted target, and the result reaches SQLite.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_allowlisted_action_succeeds_and_reaches_sqlite() {
    let f = fleet("pi-ok", "reboot = true\nset_interval = true", "", true).await;

    f.succeeds(&["ping"], b"pong", None).await;
    assert!(f.fake.calls().is_empty(), "ping ran a program");

    let mut want_calls = Vec::new();
    for op in ["status", "start", "restart", "stop"] {
        let out = format!("fake systemctl {op} -- {UNIT}\n");
        f.succeeds(&["service", op, UNIT], out.as_bytes(), Some(0))
            .await;
        want_calls.push(format!("systemctl {op} -- {UNIT}"));
        assert_eq!(f.fake.calls(), want_calls);
    }

    f.succeeds(&["journal", UNIT, "20"], FAKE_JOURNAL.as_bytes(), Some(0))
        .await;
    want_calls.push(format!(
        "journalctl -u {UNIT} -n 20 --no-pager -o short-iso"
    ));
    assert_eq!(f.fake.calls(), want_calls);
    // A longer tail than journal_max_lines is cut to it.
    f.succeeds(&["journal", UNIT, "500"], FAKE_JOURNAL.as_bytes(), Some(0))
        .await;
    want_calls.push(format!(
        "journalctl -u {UNIT} -n 200 --no-pager -o short-iso"
    ));
    assert_eq!(f.fake.calls(), want_calls);

    f.succeeds(
        &["script", "report", "--full"],
        b"report: --quiet --full\n",
        Some(0),
    )
    .await;
    want_calls.push("report.sh --quiet --full".to_owned());
    f.succeeds(&["script", "report"], b"report: --quiet\n", Some(0))
        .await;
    want_calls.push("report.sh --quiet".to_owned());
    assert_eq!(f.fake.calls(), want_calls);

    f.succeeds(&["interval", "7"], b"telemetry interval set to 7 s", None)
        .await;
    assert_eq!(f.fake.calls(), want_calls, "set interval ran a program");

    // `--wait` prints the final rows and exits 0 when all succeeded.
    let out = f.send_raw(&["--wait"], &["ping"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text.find('[').unwrap()..];
    let rows: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(rows[0]["status"], "succeeded", "{rows}");

    // Reboot: the row succeeds first, then the agent reboots (`systemctl reboot`, as a
    // systemctl is in its path).
    f.succeeds(&["reboot"], b"rebooting in a few seconds", None)
        .await;
    want_calls.push("systemctl reboot".to_owned());
    wait_for(FINAL, "the fake records the reboot", || async {
        (f.fake.calls().len() >= want_calls.len()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", f.agent.log()));
    assert_eq!(f.fake.calls(), want_calls);
}

/// Reboot through the `reboot` program when there is no `systemctl` in the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_without_systemctl_runs_reboot() {
    let mut f = fleet("pi-reboot", "reboot = true", "", false).await;
    std::fs::remove_file(f.fake.dir.join("systemctl")).unwrap();
    f.start_agent().await;
    f.succeeds(&["reboot"], b"rebooting in a few seconds", None)
        .await;
    wait_for(FINAL, "the fake records the reboot", || async {
        (!f.fake.calls().is_empty()).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", f.agent.log()));
    assert_eq!(f.fake.calls(), vec!["reboot ".to_owned()]);
}

// ---------------------------------------------------------------------------------------
// 2. Refusals: recorded with their reason, and nothing runs.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_recorded_and_nothing_runs() {
    let f = fleet("pi-no", "", "", true).await;

    f.rejected(&["service", "start", "ssh.service"], "not_allowed")
        .await;
    f.rejected(&["service", "restart", "kiosk"], "not_allowed")
        .await;
    f.rejected(&["journal", "ssh.service"], "not_allowed").await;
    let row = f.rejected(&["reboot"], "not_allowed").await;
    assert!(
        row.reason.as_deref().unwrap_or_default().contains("reboot"),
        "{row:?}"
    );
    f.rejected(&["script", "wipe"], "not_allowed").await;
    let row = f
        .rejected(&["script", "report", "--delete"], "not_allowed")
        .await;
    assert!(
        row.reason
            .as_deref()
            .unwrap_or_default()
            .contains("--delete"),
        "{row:?}"
    );
    f.rejected(&["interval", "30"], "not_allowed").await;

    // `--wait` exits 2 when a command did not succeed.
    let out = f.send_raw(&["--wait"], &["service", "stop", "ssh.service"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The CLI refuses bad names before queueing anything.
    let before = f.command_count().await;
    for unit in ["a b", "a;b", "$(x)", "--now", "../x", "-x", "a/b", ""] {
        let out = f.send_raw(&[], &["service", "start", unit]);
        assert!(
            !out.status.success(),
            "cmd send service start {unit:?} was accepted: {out:?}"
        );
    }
    for action in [
        &["script", "report", "a;b"][..],
        &["script", "x y"],
        &["journal", "../etc/passwd"],
        &["journal", UNIT, "0"],
        &["interval", "0"],
        &["shell", "rm", "-rf", "/"],
    ] {
        let out = f.send_raw(&[], action);
        assert!(!out.status.success(), "cmd send {action:?} was accepted");
    }
    assert_eq!(f.command_count().await, before, "something was queued");

    // A ping afterwards still works (and orders everything before it).
    f.succeeds(&["ping"], b"pong", None).await;
    assert!(
        f.fake.calls().is_empty(),
        "a refused command ran: {:?}",
        f.fake.calls()
    );
}

// ---------------------------------------------------------------------------------------
// 3. Offline delivery and expiry.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agent_gets_queued_commands_and_never_expired_ones() {
    let mut f = fleet("pi-off", "", "", false).await;
    assert_ne!(f.ctl.online(&f.agent.id).await, Some(1));

    let later = f.send(&[], &["service", "start", UNIT]);
    let short = f.send(&["--ttl", "2s"], &["service", "stop", UNIT]);
    let cancelled = f.send(&[], &["service", "restart", UNIT]);
    let out = f.ctl.cli(&["cmd", "cancel", &cancelled]).unwrap();
    assert!(out.status.success(), "{out:?}");
    // `cmd list` and `cmd show` see them.
    let out = f
        .ctl
        .cli(&["cmd", "list", "--device", &f.agent.id])
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        list.lines()
            .any(|l| l.starts_with(&cancelled) && l.contains("\tcancelled")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with(&later) && l.contains("\tqueued")),
        "{list}"
    );
    let out = f.ctl.cli(&["cmd", "show", &later]).unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["action_kind"], "service");
    let row = f.wait_status(&short, &["expired"]).await;
    assert!(row.reason.is_some(), "{row:?}");
    // By the time the short one expired, the other one was still waiting for the device.
    assert_eq!(f.row(&later).await.unwrap().status, "queued");

    f.start_agent().await;
    let row = f.wait_final(&later).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(
        row.stdout.as_deref().unwrap_or_default(),
        format!("fake systemctl start -- {UNIT}\n").as_bytes()
    );
    // A ping sent now is answered after anything else the agent could have received.
    f.succeeds(&["ping"], b"pong", None).await;
    assert_eq!(f.row(&short).await.unwrap().status, "expired");
    assert_eq!(f.row(&cancelled).await.unwrap().status, "cancelled");
    // Once sent, a command can no longer be cancelled.
    let out = f.ctl.cli(&["cmd", "cancel", &later]).unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(f.fake.calls(), vec![format!("systemctl start -- {UNIT}")]);
}

// ---------------------------------------------------------------------------------------
// 4. The agent is killed while a command runs.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_command_reports_it_interrupted_and_never_reruns_it() {
    let scripts = |f: &Path| {
        format!(
            "[commands.scripts.block]\nargv = [\"{}\"]\n",
            f.join("block.sh").display()
        )
    };
    let tmp_bin = tempfile::tempdir().unwrap();
    let never = tmp_bin.path().join("never-created");
    // Records its pid, then waits (bounded, ~60 s) for a file nobody creates.
    let body = format!(
        "echo \"pid $$\" >> '{calls}.pids'\ni=0\nwhile [ ! -e '{never}' ] && [ $i -lt 600 ]; do /bin/sleep 0.1; i=$((i+1)); done\n",
        calls = "CALLS",
        never = never.display()
    );
    let mut f = fleet("pi-kill", "", "", false).await;
    let body = body.replace("CALLS", &f.fake.calls.display().to_string());
    f.fake.write_script("block.sh", &body).unwrap();
    let section = commands_toml(&f.fake, "", &scripts(&f.fake.dir));
    f.agent.set_commands_toml(&section).unwrap();
    f.start_agent().await;

    let id = f.send(&[], &["script", "block"]);
    f.wait_status(&id, &["running"]).await;
    wait_for(FINAL, "the script started", || async {
        f.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("block.sh"))
            .then_some(())
    })
    .await
    .unwrap();

    f.agent.kill9();
    let pids_file = PathBuf::from(format!("{}.pids", f.fake.calls.display()));
    f.start_agent().await;
    let row = f.wait_final(&id).await;
    // The orphaned script is ours to clean up.
    for line in std::fs::read_to_string(&pids_file)
        .unwrap_or_default()
        .lines()
    {
        if let Some(pid) = line.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(
        row.reason
            .as_deref()
            .unwrap_or_default()
            .contains("interrupted"),
        "{row:?}"
    );
    // Answered after anything the restarted agent might have run.
    f.succeeds(&["ping"], b"pong", None).await;
    let runs = f
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("block.sh"))
        .count();
    assert_eq!(runs, 1, "calls: {:?}", f.fake.calls());
}

// ---------------------------------------------------------------------------------------
// 5. A compromised broker.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compromised_broker_cannot_make_the_agent_run_anything() {
    let mut f = fleet("pi-mitm", "", "", false).await;
    let broker = Broker::start(&f.ctl).unwrap();
    f.agent.set_mqtt_port(broker.tls_port).unwrap();
    let dev = f.agent.id.clone();
    let real = CommandSigner::from_pkcs8_pem(
        &std::fs::read_to_string(f.ctl.data.join("command.key")).unwrap(),
    )
    .unwrap();
    let rogue = other_signer().unwrap();

    let mut atk = Attacker::connect(broker.plain_port, &f.ctl, &dev)
        .await
        .unwrap();
    f.agent.start().unwrap();
    atk.wait_hello().await.unwrap();

    // The one valid command: signed with the real key, allowlisted. It runs.
    let valid_env = envelope(&dev, &real, service(UNIT, ServiceOp::Restart));
    let valid = real.sign(&valid_env).unwrap();
    atk.publish(wire(&valid).unwrap()).await.unwrap();
    let r = atk.next_final().await.unwrap();
    assert_eq!(r.command, valid_env.id);
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(f.fake.calls(), vec![format!("systemctl restart -- {UNIT}")]);

    let zero = CommandId([0; 16]);
    let mut attacks: Vec<(&str, Vec<u8>, &str, Option<CommandId>)> = Vec::new();

    // Forged signature: the real key id, another key's signature.
    let env = envelope(&dev, &real, service(UNIT, ServiceOp::Stop));
    let mut forged = real.sign(&env).unwrap();
    forged.signature = rogue.sign(&env).unwrap().signature;
    attacks.push((
        "forged signature",
        wire(&forged).unwrap(),
        "bad_signature",
        Some(zero),
    ));

    // Signed by a key the device does not know.
    let env = envelope(&dev, &rogue, service(UNIT, ServiceOp::Stop));
    attacks.push((
        "unknown key",
        wire(&rogue.sign(&env).unwrap()).unwrap(),
        "unknown_key",
        Some(zero),
    ));

    // The body altered after signing (the unit renamed, same length).
    let env = envelope(&dev, &real, service("kiosk.servicf", ServiceOp::Stop));
    let mut altered = real.sign(&env).unwrap();
    let pos = altered
        .body
        .windows(12)
        .position(|w| w == b"kiosk.servic")
        .unwrap();
    altered.body[pos + 12] = b'e';
    attacks.push((
        "altered body",
        wire(&altered).unwrap(),
        "bad_signature",
        Some(zero),
    ));

    // Expired.
    let mut env = envelope(&dev, &real, service(UNIT, ServiceOp::Stop));
    env.issued_at_ms -= 120_000;
    env.expires_at_ms = env.issued_at_ms + 60_000;
    let id = env.id;
    attacks.push((
        "expired",
        wire(&real.sign(&env).unwrap()).unwrap(),
        "expired",
        Some(id),
    ));

    // For another device.
    let env = envelope("pi-other", &real, service(UNIT, ServiceOp::Stop));
    let id = env.id;
    attacks.push((
        "another device",
        wire(&real.sign(&env).unwrap()).unwrap(),
        "wrong_device",
        Some(id),
    ));

    // Lifetime over the 7-day cap.
    let mut env = envelope(&dev, &real, service(UNIT, ServiceOp::Stop));
    env.expires_at_ms = env.issued_at_ms + 8 * 24 * 3_600_000;
    let id = env.id;
    attacks.push((
        "ttl too long",
        wire(&real.sign(&env).unwrap()).unwrap(),
        "ttl_too_long",
        Some(id),
    ));

    // Replay of the accepted command.
    attacks.push((
        "replay",
        wire(&valid).unwrap(),
        "replayed",
        Some(valid_env.id),
    ));

    // Validly signed but not allowlisted, or hostile names.
    let hostile = [
        "ssh.service",
        "kiosk service",
        "kiosk;reboot",
        "$(reboot)",
        "--now",
        "../kiosk.service",
        "-x",
    ];
    for unit in hostile {
        let env = envelope(&dev, &real, service(unit, ServiceOp::Start));
        let id = env.id;
        attacks.push((
            unit,
            wire(&real.sign(&env).unwrap()).unwrap(),
            "not_allowed",
            Some(id),
        ));
    }
    let env = envelope(
        &dev,
        &real,
        Action::JournalTail {
            unit: "kiosk.service;reboot".into(),
            lines: 10,
        },
    );
    let id = env.id;
    attacks.push((
        "journal ;",
        wire(&real.sign(&env).unwrap()).unwrap(),
        "not_allowed",
        Some(id),
    ));
    let env = envelope(
        &dev,
        &real,
        Action::RunScript {
            name: "report".into(),
            args: vec!["--delete".into()],
        },
    );
    let id = env.id;
    attacks.push((
        "undeclared script arg",
        wire(&real.sign(&env).unwrap()).unwrap(),
        "not_allowed",
        Some(id),
    ));
    let env = envelope(&dev, &real, Action::Reboot);
    let id = env.id;
    attacks.push((
        "reboot disabled",
        wire(&real.sign(&env).unwrap()).unwrap(),
        "not_allowed",
        Some(id),
    ));

    // Oversize: a validly signed envelope over 16 KiB (encoded by hand: the codec refuses).
    let env = envelope(
        &dev,
        &real,
        Action::RunScript {
            name: "report".into(),
            args: vec!["--full".into(); 3000],
        },
    );
    let big = real.sign(&env).unwrap();
    let mut payload = vec![pifleet_shared::proto::v1::VERSION];
    payload.extend(postcard::to_allocvec(&big).unwrap());
    assert!(payload.len() > Kind::Cmd.max_payload());
    attacks.push(("oversize", payload, "oversize", Some(zero)));

    for (what, payload, reason, want_id) in &attacks {
        atk.publish(payload.clone()).await.unwrap();
        let r = atk.next_final().await.unwrap();
        let Outcome::Rejected(text) = &r.outcome else {
            panic!("{what}: not rejected: {r:?}\nagent log:\n{}", f.agent.log());
        };
        assert!(
            text.starts_with(reason),
            "{what}: reason {text:?}, expected {reason:?}"
        );
        if let Some(id) = want_id {
            assert_eq!(r.command, *id, "{what}: receipt command id");
        }
        assert_eq!(r.device, dev);
    }

    // Replay after an agent restart: the journal still knows the command.
    assert!(
        f.agent.stop().is_some_and(|s| s.success()),
        "{}",
        f.agent.log()
    );
    f.agent.start().unwrap();
    atk.wait_hello().await.unwrap();
    atk.publish(wire(&valid).unwrap()).await.unwrap();
    let r = atk.next_final().await.unwrap();
    assert_eq!(r.command, valid_env.id);
    assert!(
        matches!(&r.outcome, Outcome::Rejected(t) if t.starts_with("replayed")),
        "{r:?}"
    );
    // And after a kill -9.
    f.agent.kill9();
    f.agent.start().unwrap();
    atk.wait_hello().await.unwrap();
    atk.publish(wire(&valid).unwrap()).await.unwrap();
    let r = atk.next_final().await.unwrap();
    assert!(
        matches!(&r.outcome, Outcome::Rejected(t) if t.starts_with("replayed")),
        "{r:?}"
    );

    assert_eq!(
        f.fake.calls(),
        vec![format!("systemctl restart -- {UNIT}")],
        "mosquitto log:\n{}",
        broker.log()
    );
}

// ---------------------------------------------------------------------------------------
// Regression: a delivery lost before the device subscribed is sent again.
// ---------------------------------------------------------------------------------------

/// The controller publishes a queued command as soon as the device's CONNECT is registered;
/// a device (clean session) whose SUBSCRIBE arrives after that publish misses it. The
/// dispatcher re-sends commands the device has not acknowledged after `commands.resend_ms`,
/// so the command still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_missed_before_subscribe_is_sent_again() {
    let f = fleet("pi-slow", "", "", false).await;
    let id = f.send(&[], &["ping"]);
    // The device connects with its own certificate, but subscribes a little later.
    let (client, mut ev) = pifleet_tests::mqtt::session(&f.ctl, &f.agent, &f.agent.id).unwrap();
    pifleet_tests::mqtt::connack(&mut ev).await.unwrap();
    let (mut rx, _task) = pifleet_tests::mqtt::forward_publishes(ev);
    wait_for(FINAL, "command marked sent", || async {
        f.row(&id).await.filter(|r| r.status == "sent").map(|_| ())
    })
    .await
    .unwrap();
    client
        .subscribe(format!("fleet/{}/down/#", f.agent.id), QoS::AtLeastOnce)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(p) = rx.recv().await {
            if let Ok(p) = p
                && p.topic.ends_with("/down/cmd")
            {
                return Some(p);
            }
        }
        None
    })
    .await;
    assert!(
        matches!(got, Ok(Some(_))),
        "the command was never delivered to the device once it subscribed; row: {:?}",
        f.row(&id).await
    );
}

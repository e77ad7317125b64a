//! Backups in PostgreSQL mode, end to end with real processes: the drill of docs/SCALING.md
//! ("Backups and the restore drill"), command for command. A controller on PostgreSQL with
//! real agents streaming, a command carried out, a user, an API token and their audit trail;
//! `pg_dump` of the live database and a tarball of the data dir's files; then the controller
//! stopped, the dump restored into a new database, the files into a fresh data dir, the
//! config pointed at the restored database. The restored controller is ready, shows the same
//! devices and every dumped sample, its audit log verifies, the user and the API token still
//! work, and the agents reconnect unattended (their certificates meet the CA that came back
//! with the keys) and their new samples land. A device revoked after the dump is not revoked
//! in it, and is revoked again from the revocation log before the start. Key files older
//! than the dump (taken before a command-key rotation) are refused at start with a message
//! that says so.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::pgkit::{PgFleet, counts};
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

/// Generous bound for what normally takes a few seconds.
const LONG: Duration = Duration::from_secs(40);

// The drill's commands, as docs/SCALING.md gives them (checked by the last test below).
/// What the tarball leaves out of the data dir.
const TAR_EXCLUDES: [&str; 4] = [
    "--exclude=./serve.json",
    "--exclude=./crl.lock",
    "--exclude=./backups/pifleet-backup-*",
    "--exclude=./pifleet.db*",
];
/// `pg_restore`'s flags besides `--dbname`.
const RESTORE_FLAGS: [&str; 3] = ["--no-owner", "--exit-on-error", "--single-transaction"];
/// The `sed` script that points `[store] url` at the restored database, up to the URL.
const POINT_AT: &str = r"/^\[store\]/,/^\[/ s|^url = .*|url = ";
/// The revocation log's device ids, one a line.
const LOGGED_IDS: &str = r#"sed -n 's/^{"device":"\([^"]*\)".*/\1/p'"#;
/// Each id revoked again.
const REVOKE_EACH: &str = "sort -u | xargs -r -n1";

/// The newest Debian PostgreSQL client program `name` (`/usr/lib/postgresql/<v>/bin`).
fn pg_tool(name: &str) -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/deps.sh)")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(name);
            p.exists().then_some((v, p))
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql/*/bin"))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` (the PostgreSQL password in its environment, as `~/.pgpass` would give it)
/// and fails the test unless it succeeds; its output.
fn ok(cmd: &mut Command, db: &PgFleet) -> Output {
    let out = cmd
        .env("PGPASSWORD", db.cluster.password())
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

fn logs(ctl: &Controller, agents: &[Agent]) -> String {
    let mut s = format!("--- controller:\n{}", ctl.log());
    for a in agents {
        s += &format!("--- agent {}:\n{}", a.id, a.log());
    }
    s
}

/// The drill's tarball of a data dir: every file but the running process's own state, the
/// SQLite leftovers and embedded-mode backups (docs/SCALING.md).
fn tar_keys(data: &Path, tgz: &Path, db: &PgFleet) {
    ok(
        Command::new("tar")
            .arg("-C")
            .arg(data)
            .args(TAR_EXCLUDES)
            .arg("-czf")
            .arg(tgz)
            .arg("."),
        db,
    );
}

/// The drill's restore of the files into a fresh data dir `data`, its config pointed at
/// the database `url`.
fn untar_keys(tgz: &Path, data: &Path, url: &str, db: &PgFleet) {
    ok(
        Command::new("install").args(["-d", "-m", "0700"]).arg(data),
        db,
    );
    ok(
        Command::new("tar").arg("-C").arg(data).arg("-xzf").arg(tgz),
        db,
    );
    ok(
        Command::new("sed")
            .arg("-i")
            .arg(format!("{POINT_AT}\"{url}\"|"))
            .arg(data.join("config.toml")),
        db,
    );
}

/// The drill's second look at revocations: every device a revocation log names is revoked
/// again in the restored database (the docs' pipeline, run by `sh`).
fn revoke_again(data: &Path, db: &PgFleet) {
    let path = format!(
        "{}:{}",
        pifleet_tests::harness::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{LOGGED_IDS} \"$1/backups/revocations.log\" | {REVOKE_EACH} \
                 pifleet-controller device revoke --data-dir \"$1\""
            ))
            .arg("sh")
            .arg(data)
            .env("PATH", path),
        db,
    );
}

/// Telemetry rows in a custom-format dump, counted from `pg_restore`'s SQL text: the lines
/// of each `COPY` into a telemetry partition.
fn dumped_samples(dump: &Path, db: &PgFleet) -> usize {
    let out = ok(
        Command::new(pg_tool("pg_restore"))
            .args(["--data-only", "--file=-"])
            .arg(dump),
        db,
    );
    let sql = String::from_utf8(out.stdout).unwrap();
    let mut rows = 0;
    let mut in_telemetry = false;
    for line in sql.lines() {
        if in_telemetry {
            if line == "\\." {
                in_telemetry = false;
            } else {
                rows += 1;
            }
        } else if let Some(rest) = line.strip_prefix("COPY public.telemetry_") {
            let table = rest.split_whitespace().next().unwrap_or_default();
            in_telemetry = table == "default"
                || table
                    .strip_prefix('p')
                    .is_some_and(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()));
        }
    }
    rows
}

/// (id, hostname, revoked) of every device, from `device list --json`.
fn devices(ctl: &Controller) -> BTreeSet<(String, String, bool)> {
    let out = ctl.cli(&["device", "list", "--json"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["hostname"].as_str().unwrap_or_default().to_owned(),
                !d["revoked_at"].is_null(),
            )
        })
        .collect()
}

/// `cmd send ping` to `device` and waits until the command succeeded in `pool`.
async fn ping(ctl: &Controller, pool: &PgPool, device: &str, agents: &[Agent]) {
    let data = ctl.data.to_str().unwrap();
    let out = Command::new(pifleet_tests::harness::bin("pifleet-controller").unwrap())
        .args([
            "cmd",
            "send",
            "--data-dir",
            data,
            "--device",
            device,
            "ping",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout)
        .split('\t')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    wait_for(LONG, &format!("ping {id} to {device} succeeded"), || {
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            let s: Option<String> = sqlx::query_scalar("SELECT status FROM commands WHERE id = $1")
                .bind(&id)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
            (s.as_deref() == Some("succeeded")).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(ctl, agents)));
}

/// Waits until every agent's samples in `pool` reach `seq + 2` of what its spool held.
async fn streaming_past(pool: &PgPool, agents: &[Agent], seqs: &[u64], ctl: &Controller) {
    for (a, seq) in agents.iter().zip(seqs) {
        wait_for(LONG, &format!("{} streams past seq {seq}", a.id), || {
            let pool = pool.clone();
            async move {
                let max = counts(&pool).await.into_iter().find(|c| c.0 == a.id)?.3;
                (u64::try_from(max).ok()? >= seq + 2).then_some(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(ctl, agents)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_the_key_tarball_restore_a_working_fleet() {
    let db = PgFleet::start().await;
    let pool = db.pool.clone();
    let mut ctl = Controller::start_init(&db.init_args(), "[auth]\nkey_reload_s = 1")
        .await
        .unwrap();
    let mut agents: Vec<Agent> = ["pi-a", "pi-b"]
        .iter()
        .map(|id| {
            let a = Agent::enroll(&ctl, id, 1).unwrap();
            a.set_backoff_max(1).unwrap();
            a
        })
        .collect();
    for a in &mut agents {
        a.start().unwrap();
    }
    // A third device, enrolled, never run: revoked after the dump below.
    let _pi_c = Agent::enroll(&ctl, "pi-c", 1).unwrap();
    streaming_past(&pool, &agents, &[1, 1], &ctl).await;
    ping(&ctl, &pool, "pi-a", &agents).await;

    // A user and an API token, made through the API (and so in the audit trail).
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    api.user(&admin, "olga", "operator").await.unwrap();
    let r = api
        .post(
            "/api/v1/api-tokens",
            Some(&admin),
            &json!({ "name": "ci", "role": "viewer", "ttl_s": 3600 }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let api_token = r.json()["token"].as_str().unwrap().to_owned();
    let audited: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(audited >= 3, "{audited} audit entries");
    let before = devices(&ctl);
    assert_eq!(before.len(), 3, "{before:?}");

    // Key files taken too early: before a command-key rotation that the dump will hold.
    let work = tempfile::tempdir().unwrap();
    let stale_keys = work.path().join("pifleet-keys-stale.tgz");
    tar_keys(&ctl.data, &stale_keys, &db);
    let rotated = ctl
        .cli(&["rotate", "command-key", "--overlap-s", "600"])
        .unwrap();
    assert!(rotated.status.success(), "{}", text(&rotated));

    // The backup, while the controller serves and the agents stream.
    let dump = work.path().join("pifleet.dump");
    let keys = work.path().join("pifleet-keys.tgz");
    let t = Instant::now();
    ok(
        Command::new(pg_tool("pg_dump"))
            .arg("--format=custom")
            .arg(format!("--file={}", dump.display()))
            .arg(&db.url),
        &db,
    );
    let dump_took = t.elapsed();
    // A revocation after the dump: in the revocation log the tarball carries, not in the dump.
    ctl.revoke("pi-c").unwrap();
    tar_keys(&ctl.data, &keys, &db);
    // Every file `init` and the rotation wrote that a restore needs is in the tarball: each
    // one an embedded-mode backup carries (all the required ones exist), the revocation log;
    // the process's own state is not.
    let listed = ok(Command::new("tar").arg("-tzf").arg(&keys), &db);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let carried = pifleet_controller::backup::data_file_names();
    assert!(carried.len() >= 10, "{carried:?}");
    for (f, required) in carried {
        if required || ctl.data.join(&f).exists() {
            assert!(
                listed.lines().any(|l| l == format!("./{f}")),
                "{f}:\n{listed}"
            );
        }
    }
    for f in ["command-previous.key", "crl.pem", "backups/revocations.log"] {
        assert!(
            listed.lines().any(|l| l == format!("./{f}")),
            "{f}:\n{listed}"
        );
    }
    assert!(
        !listed.contains("serve.json") && !listed.contains("crl.lock"),
        "{listed}"
    );
    // Samples after the dump: acknowledged by this controller, lost with it.
    let at_dump: Vec<u64> = agents.iter().map(Agent::spool_max_seq).collect();
    for (a, m) in agents.iter().zip(&at_dump) {
        wait_for(LONG, &format!("{} goes on", a.id), || async {
            (a.spool_max_seq() >= m + 2).then_some(())
        })
        .await
        .unwrap();
    }

    // The drill: every controller stopped, an empty database, the dump into it.
    ctl.stop().expect("the controller was running");
    let t = Instant::now();
    let port = db.cluster.port();
    let restored_url = format!("postgres://pifleet@127.0.0.1:{port}/pifleet_restored");
    ok(
        Command::new(pg_tool("createdb"))
            .arg(format!(
                "--maintenance-db=postgres://pifleet@127.0.0.1:{port}/postgres"
            ))
            .args(["--owner=pifleet", "pifleet_restored"]),
        &db,
    );
    ok(
        Command::new(pg_tool("pg_restore"))
            .arg(format!("--dbname={restored_url}"))
            .args(RESTORE_FLAGS)
            .arg(&dump),
        &db,
    );
    let restore_took = t.elapsed();
    let restored = PgPool::connect(&db.cluster.url("pifleet_restored"))
        .await
        .unwrap();
    let dumped = dumped_samples(&dump, &db);
    let in_restored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM telemetry")
        .fetch_one(&restored)
        .await
        .unwrap();
    assert!(dumped >= 4, "{dumped} samples in the dump");
    assert_eq!(usize::try_from(in_restored).unwrap(), dumped);
    let restored_counts = counts(&restored).await;

    // Stale keys: the controller refuses to start and says why.
    let stale = work.path().join("stale");
    untar_keys(&stale_keys, &stale, &restored_url, &db);
    ctl.data = stale;
    let refused = ctl.serve().await.expect_err("started on stale keys");
    let refused = refused.to_string();
    assert!(
        refused.contains("command key: command.key is key")
            && refused.contains("key files are older than the database"),
        "{refused}"
    );

    // The key files from after the dump: the restored controller serves, on the same ports.
    let t = Instant::now();
    let data = work.path().join("data");
    untar_keys(&keys, &data, &restored_url, &db);
    ctl.data = data.clone();
    // The dump's devices, pi-c among them as it was then: not revoked. Revoked again from
    // the log before anything starts.
    assert_eq!(devices(&ctl), before);
    revoke_again(&data, &db);
    let mut revoked = before.clone();
    let c = revoked.iter().find(|d| d.0 == "pi-c").unwrap().clone();
    revoked.remove(&c);
    revoked.insert((c.0, c.1, true));
    assert_eq!(devices(&ctl), revoked);
    ctl.serve().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    wait_for(LONG, "/readyz is 200", || async {
        (api.get("/readyz", None).await.ok()?.status == 200).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &agents)));
    let files_took = t.elapsed();
    eprintln!(
        "{dumped} samples; pg_dump took {dump_took:?}; createdb and pg_restore {restore_took:?}; \
         the files, the config and the start to /readyz {files_took:?}"
    );

    assert_eq!(devices(&ctl), revoked);
    let verified = ctl.cli(&["audit", "verify"]).unwrap();
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("audit log intact"),
        "{}",
        text(&verified)
    );
    let r = api.get("/api/v1/devices", Some(&api_token)).await.unwrap();
    assert_eq!(r.status, 200, "the API token: {}", r.text);
    assert!(
        r.text.contains("pi-a") && r.text.contains("pi-b"),
        "{}",
        r.text
    );
    let (olga, _) = api.tokens("olga", TEST_PASSWORD).await.unwrap();
    let r = api.get("/api/v1/whoami", Some(&olga)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);

    // The agents come back by themselves, past what they produced meanwhile; every sample
    // of the dump is still there, none twice; a command signed with the rotated keys is
    // carried out.
    let now: Vec<u64> = agents.iter().map(Agent::spool_max_seq).collect();
    streaming_past(&restored, &agents, &now, &ctl).await;
    for (device, rows, distinct, _) in counts(&restored).await {
        assert_eq!(rows, distinct, "{device}: a sample stored twice");
        let dumped = restored_counts.iter().find(|c| c.0 == device).unwrap();
        assert!(
            rows > dumped.1,
            "{device}: {rows} rows, {} dumped",
            dumped.1
        );
    }
    ping(&ctl, &restored, "pi-b", &agents).await;

    for a in &mut agents {
        a.stop();
    }
    ctl.stop();
    restored.close().await;
}

/// docs/SCALING.md's drill gives the commands this test runs: the same flags, exclusions and
/// scripts (its shell quoting aside).
#[test]
fn the_documented_drill_is_the_tested_one() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SCALING.md"))
        .unwrap();
    let start = doc.find("### Backups and the restore drill").unwrap();
    let end = doc[start..].find("\n## ").map_or(doc.len(), |e| start + e);
    let drill = &doc[start..end];
    let unquoted = drill.replace('\'', "");
    for flag in TAR_EXCLUDES {
        assert!(unquoted.contains(flag), "{flag} is not in the docs' drill");
    }
    for piece in [
        "pg_dump --format=custom --file=",
        "createdb --maintenance-db=",
        "--owner=pifleet pifleet_restored",
        "pg_restore --dbname=",
        &RESTORE_FLAGS.join(" "),
        "install -d -m 0700",
        "-xzf",
        POINT_AT,
        LOGGED_IDS,
        REVOKE_EACH,
        "pifleet-controller device revoke",
        "/backups/revocations.log",
    ] {
        assert!(drill.contains(piece), "{piece} is not in the docs' drill");
    }
}

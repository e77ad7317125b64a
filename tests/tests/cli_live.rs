//! The command line beside a running controller, end to end through the real binaries:
//! writing commands of every kind succeed while agents stream (every write transaction
//! takes the write lock up front and waits its turn), and every command refuses a data dir
//! that it does not own or that is open to other users, before it writes anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, bin, wait_for};

/// Runs `pifleet-controller GROUP COMMAND --data-dir DATA REST…` without blocking the
/// runtime (the data dir goes before `cmd send`'s trailing action words).
async fn cli(data: &Path, args: Vec<String>) -> Output {
    let split = args.len().min(2);
    tokio::process::Command::new(bin("pifleet-controller").unwrap())
        .args(&args[..split])
        .arg("--data-dir")
        .arg(data)
        .args(&args[split..])
        .output()
        .await
        .unwrap()
}

/// Runs a batch of commands, at most 8 at once; fails with every command that did not
/// succeed.
async fn run_all(ctl: &Controller, batch: Vec<Vec<String>>) -> Vec<(Vec<String>, Output)> {
    let limit = Arc::new(tokio::sync::Semaphore::new(8));
    let mut jobs = tokio::task::JoinSet::new();
    for args in batch {
        let data = ctl.data.clone();
        let limit = limit.clone();
        jobs.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let out = cli(&data, args.clone()).await;
            (args, out)
        });
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    while let Some(j) = jobs.join_next().await {
        let (args, out) = j.unwrap();
        if !out.status.success() {
            failed.push(format!(
                "{} → {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        done.push((args, out));
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    done
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_commands_of_every_kind_succeed_beside_thirty_streaming_agents() {
    const AGENTS: usize = 30;
    let ctl = Controller::start().await.unwrap();
    let mut agents: Vec<Agent> = (0..AGENTS)
        .map(|i| Agent::enroll(&ctl, &format!("pi-{i:02}"), 1).unwrap())
        .collect();
    // Devices that stay offline: their commands stay queued (to cancel), and five to revoke.
    let _queue = Agent::enroll(&ctl, "pi-queue", 60).unwrap();
    let _spare: Vec<Agent> = (0..5)
        .map(|i| Agent::enroll(&ctl, &format!("pi-spare-{i}"), 60).unwrap())
        .collect();
    for a in &mut agents {
        a.start().unwrap();
    }
    wait_for(Duration::from_secs(60), "30 agents streaming", || async {
        let db = ctl.db().await.ok()?;
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT device_id) FROM telemetry WHERE device_id LIKE 'pi-__'",
        )
        .fetch_one(&db)
        .await
        .ok()?;
        db.close().await;
        (n == AGENTS as i64).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    let tokens: Vec<String> = (0..5).map(|_| ctl.token(None, "10m").unwrap()).collect();
    assert_eq!(tokens.len(), 5);
    let token_ids: Vec<String> = String::from_utf8(ctl.cli(&["token", "list"]).unwrap().stdout)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with("\tunused"))
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(token_ids.len(), 5);

    // Phase 1: 55 independent writes.
    let mut batch = Vec::new();
    for _ in 0..15 {
        batch.push(words("token create --ttl 10m --label site=lab"));
    }
    for id in &token_ids {
        batch.push(words(&format!("token revoke {id}")));
    }
    for i in 0..10 {
        batch.push(words(&format!("user add u{i} --role viewer --generate")));
    }
    for i in 0..10 {
        batch.push(words(&format!("cmd send --device pi-{i:02} ping")));
        batch.push(words("cmd send --device pi-queue ping"));
    }
    for i in 0..5 {
        batch.push(words(&format!("device revoke pi-spare-{i}")));
    }
    let phase1 = run_all(&ctl, batch).await;
    let queued: Vec<String> = phase1
        .iter()
        .filter(|(args, _)| args.contains(&"pi-queue".to_owned()))
        .map(|(_, out)| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split('\t').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(queued.len(), 10);

    // Phase 2: 35 writes on what phase 1 made.
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(words(&format!("user set-role u{i} operator")));
        batch.push(words(&format!("user disable u{i}")));
        batch.push(words(&format!("user reset-mfa u{}", i + 5)));
        batch.push(words(&format!("user reset-password u{}", i + 5)));
    }
    for id in &queued {
        batch.push(words(&format!("cmd cancel {id}")));
    }
    for _ in 0..5 {
        batch.push(words("token create --ttl 1h"));
    }
    run_all(&ctl, batch).await;

    // Phase 3: 10 more.
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(words(&format!("user enable u{i}")));
        batch.push(words(&format!("user delete u{}", i + 5)));
    }
    run_all(&ctl, batch).await;

    // Each write is in the audit log, the chain is intact, and the agents kept streaming.
    let out = ctl.cli(&["audit", "verify"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = ctl.db().await.unwrap();
    let cli_entries: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE actor LIKE 'cli:%' AND outcome LIKE 'ok%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert!(cli_entries >= 100, "{cli_entries} CLI audit entries");
    for a in &mut agents {
        assert!(a.running(), "{} stopped", a.id);
    }
    assert!(ctl.alive());
}

/// Runs `serve` on `data` and expects it to refuse at start-up (never to start serving).
async fn serve_refused(data: &Path) -> Output {
    let mut child = tokio::process::Command::new(bin("pifleet-controller").unwrap())
        .args([
            "serve",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(_) => child.wait_with_output().await.unwrap(),
        Err(_) => panic!("serve started on a data dir it should have refused"),
    }
}

/// Every file and directory under `root` (itself included), with its owner's uid.
fn owners(root: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut out = vec![(root.to_owned(), std::fs::metadata(root).unwrap().uid())];
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        out.push((p.clone(), std::fs::metadata(&p).unwrap().uid()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_refuse_a_data_dir_they_do_not_own() {
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        // Without root nothing can be given away here; a directory root owns stands in.
        let out = cli(Path::new("/"), words("device list")).await;
        assert_eq!(out.status.code(), Some(77));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sudo -u root"), "{err}");
        return;
    }
    let mut ctl = Controller::start().await.unwrap();
    ctl.stop();
    // The data dir belongs to the service's user (here: nobody, 65534); root runs commands.
    let nobody = 65_534;
    for (path, _) in owners(&ctl.data) {
        std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).unwrap();
    }
    for args in [
        "device list",
        "token create --ttl 1h",
        "device revoke pi-x",
        "user add eve --role admin --generate",
        "audit verify",
    ] {
        let out = cli(&ctl.data, words(args)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{args}: {err}");
        assert!(err.contains("sudo -u nobody"), "{args}: {err}");
    }
    let out = serve_refused(&ctl.data).await;
    assert_eq!(out.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sudo -u nobody"));
    // Nothing was written as root.
    let root_owned: Vec<_> = owners(&ctl.data)
        .into_iter()
        .filter(|(_, uid)| *uid != nobody)
        .collect();
    assert!(root_owned.is_empty(), "{root_owned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_data_dir_open_to_others() {
    let mut ctl = Controller::start().await.unwrap();
    ctl.stop();
    std::fs::set_permissions(&ctl.data, std::fs::Permissions::from_mode(0o750)).unwrap();
    let out = serve_refused(&ctl.data).await;
    assert_eq!(out.status.code(), Some(77));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod go-rwx"), "{err}");
    // The commands refuse it too, and start working again once it is private.
    let out = cli(&ctl.data, words("device list")).await;
    assert_eq!(out.status.code(), Some(77));
    std::fs::set_permissions(&ctl.data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = cli(&ctl.data, words("device list")).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_an_existing_directory() {
    // A directory someone else could have made (or filled) beforehand, like the fixed
    // /tmp/pifleet-demo-<pid> of old.
    let tmp = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin("pifleet-controller").unwrap())
        .args(["demo", "--agents", "1", "--dir"])
        .arg(tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(s) => s.unwrap(),
        Err(_) => panic!("the demo started in an existing directory"),
    };
    let out = child.wait_with_output().await.unwrap();
    assert!(!status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the demo wrote into it"
    );
}

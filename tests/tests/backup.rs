//! Controller backups end to end through the real binaries: a backup taken while three
//! agents stream, restored offline into a fresh data dir, served on the same ports; the
//! agents reconnect unattended, every sample of the backup is there exactly once and new
//! ones arrive. Also: a damaged backup and a non-empty target are refused with clear
//! errors, an encrypted backup round-trips with its age identity, and `serve` writes
//! scheduled backups and prunes them.

// Test helpers fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, bin, wait_for};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// Generous bound for conditions that normally hold within a few seconds.
const LONG: Duration = Duration::from_secs(40);

fn logs(ctl: &Controller, agents: &[Agent]) -> String {
    let mut s = format!("--- controller log:\n{}", ctl.log());
    for a in agents {
        s += &format!("--- agent {} log:\n{}", a.id, a.log());
    }
    s
}

/// Runs the controller binary with exactly these arguments.
fn controller(args: &[&str]) -> Output {
    Command::new(bin("pifleet-controller").unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout:\n{}--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Stored seqs by device in the database `db` (read-only).
async fn seqs_in(db: &Path) -> BTreeMap<String, Vec<i64>> {
    let opts = SqliteConnectOptions::new().filename(db).read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT device_id, seq FROM telemetry ORDER BY device_id, seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (d, s) in rows {
        out.entry(d).or_default().push(s);
    }
    out
}

fn path_of(out: &Output) -> PathBuf {
    assert!(out.status.success(), "{}", text(out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_streaming_then_restore_and_carry_on() {
    let mut ctl = Controller::start_with("[backup]\nenabled = false\n")
        .await
        .unwrap();
    let mut agents: Vec<Agent> = ["bk-a", "bk-b", "bk-c"]
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
    for a in &agents {
        let r = wait_for(LONG, &format!("{} streams", a.id), || async {
            (ctl.seqs(&a.id).await.ok()?.len() >= 3).then_some(())
        })
        .await;
        r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &agents)));
    }
    // A token handed out before the backup, never used.
    ctl.token(None, "1h").unwrap();

    let out_dir = ctl.tmp.path().join("backups");
    let out_arg = out_dir.to_str().unwrap().to_owned();
    let made = ctl.cli(&["backup", "create", "--out", &out_arg]).unwrap();
    let file = path_of(&made);
    let file_arg = file.to_str().unwrap().to_owned();
    assert!(file.starts_with(&out_dir), "{}", file.display());
    let listed = ctl.cli(&["backup", "list", "--out", &out_arg]).unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("plain\tunverified"),
        "{}",
        text(&listed)
    );
    let verified = controller(&["backup", "verify", &file_arg]);
    assert!(verified.status.success(), "{}", text(&verified));
    // Streaming goes on after the backup: these samples are lost on restore.
    let at_backup: Vec<u64> = agents.iter().map(Agent::spool_max_seq).collect();
    for (a, m) in agents.iter().zip(&at_backup) {
        wait_for(LONG, &format!("{} goes on", a.id), || async {
            (a.spool_max_seq() >= m + 2).then_some(())
        })
        .await
        .unwrap();
    }
    // A device revoked after the backup must stay revoked after the restore.
    let revoked = ctl.cli(&["device", "revoke", "bk-c"]).unwrap();
    assert!(revoked.status.success(), "{}", text(&revoked));
    ctl.stop().expect("controller was running");

    // Refusals: a non-empty target, a damaged copy, no word on later revocations.
    let old = ctl.data.to_str().unwrap().to_owned();
    let unsure_target = ctl.tmp.path().join("unsure");
    let unsure = controller(&[
        "backup",
        "restore",
        &file_arg,
        "--data-dir",
        unsure_target.to_str().unwrap(),
    ]);
    assert_eq!(unsure.status.code(), Some(2), "{}", text(&unsure));
    assert!(text(&unsure).contains("--revocations"), "{}", text(&unsure));
    assert!(!unsure_target.exists());
    let full = controller(&[
        "backup",
        "restore",
        &file_arg,
        "--data-dir",
        &old,
        "--accept-lost-revocations",
    ]);
    assert_eq!(full.status.code(), Some(73), "{}", text(&full));
    assert!(text(&full).contains("is not empty"), "{}", text(&full));
    let damaged = out_dir.join("pifleet-backup-19990101T000000Z.tar");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();
    let sum = std::fs::read_to_string(format!("{file_arg}.sha256")).unwrap();
    std::fs::write(format!("{}.sha256", damaged.display()), sum).unwrap();
    let bad_target = ctl.tmp.path().join("from-damaged");
    let bad = controller(&[
        "backup",
        "restore",
        damaged.to_str().unwrap(),
        "--data-dir",
        bad_target.to_str().unwrap(),
        "--accept-lost-revocations",
    ]);
    assert_eq!(bad.status.code(), Some(65), "{}", text(&bad));
    assert!(text(&bad).contains("checksum mismatch"), "{}", text(&bad));
    assert!(!bad_target.exists());

    // Restore into a fresh dir and serve it on the same ports.
    let restored = ctl.tmp.path().join("restored");
    let r = controller(&[
        "backup",
        "restore",
        &file_arg,
        "--data-dir",
        restored.to_str().unwrap(),
        "--revocations",
        &old,
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        restored.join("pifleet.db").display()
    ))
    .await
    .unwrap();
    let still: Option<i64> = sqlx::query_scalar("SELECT revoked_at FROM devices WHERE id = 'bk-c'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(
        still.is_some(),
        "the revocation after the backup came back to life"
    );
    db.close().await;
    let in_backup = seqs_in(&restored.join("pifleet.db")).await;
    for a in &agents {
        let s = in_backup.get(&a.id).map(Vec::len).unwrap_or(0);
        assert!(s >= 3, "{}: {s} samples in the backup", a.id);
    }
    ctl.data = restored.clone();
    let tokens = ctl.cli(&["token", "list"]).unwrap();
    let tokens = String::from_utf8_lossy(&tokens.stdout).into_owned();
    assert!(
        tokens.lines().any(|l| l.ends_with("revoked")) && !tokens.contains("unused"),
        "{tokens}"
    );
    ctl.serve().await.unwrap();

    // Agents reconnect by themselves and keep streaming past what they had produced; the
    // one revoked after the backup stays out.
    let now: Vec<u64> = agents.iter().map(Agent::spool_max_seq).collect();
    for (a, n) in agents.iter().zip(&now).take(2) {
        let r = wait_for(
            LONG,
            &format!("{} streams to the restored controller", a.id),
            || async {
                let max = ctl.seqs(&a.id).await.ok()?.last().copied()?;
                (u64::try_from(max).ok()? > n + 2).then_some(())
            },
        )
        .await;
        r.unwrap_or_else(|e| panic!("{e}\n{}", logs(&ctl, &agents)));
    }
    assert_ne!(
        ctl.online("bk-c").await,
        Some(1),
        "the device revoked after the backup is let in:\n{}",
        logs(&ctl, &agents)
    );
    let after = seqs_in(&restored.join("pifleet.db")).await;
    for a in &agents {
        let before = &in_backup[&a.id];
        let now = &after[&a.id];
        for s in before {
            assert_eq!(
                now.iter().filter(|x| *x == s).count(),
                1,
                "{}: seq {s} of the backup is not there exactly once",
                a.id
            );
        }
        let mut dedup = now.clone();
        dedup.dedup();
        assert_eq!(&dedup, now, "{}: duplicate samples", a.id);
    }

    // An encrypted backup of the restored controller round-trips with its identity.
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let id_file = ctl.tmp.path().join("age-identity.txt");
    {
        use age::secrecy::ExposeSecret;
        std::fs::write(&id_file, format!("{}\n", id.to_string().expose_secret())).unwrap();
    }
    let enc = ctl
        .cli(&[
            "backup",
            "create",
            "--out",
            &out_arg,
            "--recipient",
            &recipient,
        ])
        .unwrap();
    let enc = path_of(&enc);
    assert!(enc.to_string_lossy().ends_with(".tar.age"));
    let enc_arg = enc.to_str().unwrap();
    let id_arg = id_file.to_str().unwrap();
    let no_id = controller(&["backup", "verify", enc_arg]);
    assert!(text(&no_id).contains("--identity"), "{}", text(&no_id));
    let again = ctl.tmp.path().join("restored-again");
    let r = controller(&[
        "backup",
        "restore",
        enc_arg,
        "--identity",
        id_arg,
        "--data-dir",
        again.to_str().unwrap(),
        "--accept-lost-revocations",
    ]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(
        std::fs::read(again.join("ca.key")).unwrap(),
        std::fs::read(restored.join("ca.key")).unwrap()
    );

    for a in &mut agents {
        a.stop();
    }
    ctl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_scheduled_backups_and_keeps_the_newest() {
    let mut ctl = Controller::start_with("[backup]\ninterval_s = 1\nkeep = 2\n")
        .await
        .unwrap();
    let dir = ctl.data.join("backups");
    let r = wait_for(LONG, "three scheduled backups", || async {
        (ctl.log().matches("backup written").count() >= 3).then_some(())
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    ctl.stop();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let backups = names.iter().filter(|n| n.ends_with(".tar")).count();
    let sums = names.iter().filter(|n| n.ends_with(".tar.sha256")).count();
    assert_eq!((backups, sums), (2, 2), "{names:?}");
    assert!(ctl.log().contains("old backup deleted"), "{}", ctl.log());
}

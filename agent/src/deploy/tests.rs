//! The pure parts of release commands: whether a verified manifest fits its command and
//! this machine, and how an apply's outcome is reported.

use pifleet_shared::release::HealthSpec;

use super::*;

fn manifest() -> Manifest {
    Manifest {
        app: "web".into(),
        version: "1.0".into(),
        release: 3,
        arches: vec!["aarch64".into(), "armv7l".into()],
        archive_sha256: [1; 32],
        archive_size: 100,
        unpacked_size: 10,
        entries: vec![],
        health: HealthSpec::default(),
        hooks: vec![],
        created_at_ms: 1,
    }
}

fn deploy(app: &str, release: u64, archive_sha256: [u8; 32], archive_size: u64) -> Action {
    Action::Deploy {
        app: app.into(),
        release,
        manifest_sha256: [9; 32],
        archive_sha256,
        archive_size,
        retry_failed: false,
    }
}

#[test]
fn the_manifest_must_fit_the_command_and_the_machine() {
    let any_arch = Manifest {
        arches: vec![],
        ..manifest()
    };
    let rollback = |release| Action::Rollback {
        app: "web".into(),
        release,
        manifest_sha256: [9; 32],
    };
    let table: Vec<(Action, Manifest, &str, Option<&str>)> = vec![
        (deploy("web", 3, [1; 32], 100), manifest(), "aarch64", None),
        (deploy("web", 3, [1; 32], 100), manifest(), "armv7l", None),
        (deploy("web", 3, [1; 32], 100), any_arch, "riscv64", None),
        (rollback(3), manifest(), "aarch64", None),
        (
            deploy("web", 3, [1; 32], 100),
            manifest(),
            "x86_64",
            Some("built for aarch64, armv7l, this device is x86_64"),
        ),
        (
            deploy("api", 3, [1; 32], 100),
            manifest(),
            "aarch64",
            Some("release 3 of web, the command names release 3 of api"),
        ),
        (
            deploy("web", 4, [1; 32], 100),
            manifest(),
            "aarch64",
            Some("the command names release 4 of web"),
        ),
        (rollback(2), manifest(), "aarch64", Some("names release 2")),
        (
            deploy("web", 3, [2; 32], 100),
            manifest(),
            "aarch64",
            Some("archive is not the one"),
        ),
        (
            deploy("web", 3, [1; 32], 101),
            manifest(),
            "aarch64",
            Some("archive is not the one"),
        ),
        (Action::Ping, manifest(), "aarch64", Some("not a release")),
    ];
    for (action, m, machine, want) in table {
        let got = mismatch(&action, &m, machine);
        match (want, &got) {
            (None, None) => {}
            (Some(w), Some(g)) if g.contains(w) => {}
            _ => panic!("{action:?} on {machine}: {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn outcomes_become_results() {
    let ok = done(
        "web",
        Outcome::Committed {
            release: 3,
            dir: "3-01010101".into(),
            removed: vec!["1-aaaaaaaa".into()],
        },
    );
    assert_eq!(
        ok,
        Done::Succeeded("release 3 (3-01010101) of web is live; removed 1-aaaaaaaa".into())
    );
    let back = done(
        "web",
        Outcome::RolledBack {
            release: 3,
            reason: "unit inactive".into(),
            journal_tail: "boom".into(),
            restored: Some("2-bbbbbbbb".into()),
        },
    );
    let Done::Failed { reason, journal } = back else {
        panic!("{back:?}");
    };
    assert!(reason.starts_with("rolled_back: release 3 of web failed: unit inactive"));
    assert!(reason.ends_with("2-bbbbbbbb is live again"));
    assert_eq!(journal, "boom");
    let lost = done(
        "web",
        Outcome::FailedUnrecoverable {
            release: 3,
            reason: "both failed".into(),
            journal_tail: "j".into(),
        },
    );
    assert!(
        matches!(lost, Done::Failed { reason, .. } if reason.starts_with("failed_unrecoverable"))
    );
    assert!(!machine().is_empty());
}

/// The writing thread keeps what it is told to keep, appends what arrives (more chunks
/// than the channel holds, so the download and the writer must run together), and hashes
/// the whole file.
#[tokio::test]
async fn the_writer_resumes_and_hashes_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("a.tar.gz");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let chunks: Vec<Vec<u8>> = content[1000..].chunks(997).map(<[u8]>::to_vec).collect();
    assert!(chunks.len() > 16 * 4);
    // An earlier attempt left 1000 good bytes and some that the new answer replaces.
    let mut left = content[..1000].to_vec();
    left.extend_from_slice(b"stale");
    std::fs::write(&dest, &left).unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let d = dest.clone();
    let writer = tokio::task::spawn_blocking(move || fetch::write(&d, 1000, rx));
    for c in chunks {
        tx.send(c).await.unwrap();
    }
    drop(tx);
    let (len, digest) = writer.await.unwrap().unwrap();
    assert_eq!(len, content.len() as u64);
    let want: [u8; 32] = Sha256::digest(&content).into();
    assert_eq!(digest, want);
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    // Started again from nothing (the controller answered the whole archive).
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tx.send(b"new".to_vec()).await.unwrap();
    drop(tx);
    let d = dest.clone();
    let (len, _) = tokio::task::spawn_blocking(move || fetch::write(&d, 0, rx))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(len, 3);
    assert_eq!(std::fs::read(&dest).unwrap(), b"new");
}

//! Releases end to end with a temporary data dir and database: numbering per app, duplicate
//! archives, signed manifests that verify against `release.pub`, all-or-nothing creation,
//! deletion, and the sweep after a crash.

use crate::store::db::writing;
use std::time::Duration;

use pifleet_shared::release::{HealthSpec, verify_manifest};

use super::intake::testkit::{T, gz, left_in, small, tar};
use super::*;
use crate::setup;

struct Env {
    _dir: tempfile::TempDir,
    dd: DataDir,
    store: Store,
    signer: ReleaseSigner,
    opts: IntakeOptions,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let dd = DataDir::new(dir.path().join("data"));
    dd.create_new().unwrap();
    // A data dir from before releases: ensure_secrets makes the release key.
    setup::ensure_secrets(&dd).unwrap();
    let signer = setup::release_signer(&dd).unwrap();
    let store = Store::open(&dd.database(), true).await.unwrap();
    let opts = IntakeOptions {
        limits: small(),
        git: GitOptions::default(),
    };
    Env {
        _dir: dir,
        dd,
        store,
        signer,
        opts,
    }
}

fn new(app: &str) -> NewRelease {
    NewRelease {
        app: app.into(),
        version: "1.0.0".into(),
        arches: vec!["aarch64".into()],
        health: HealthSpec::default(),
        hooks: vec!["post_switch".into()],
        created_by: "alice".into(),
    }
}

/// An upload holding one file with `content`, written next to the data dir.
fn upload(e: &Env, name: &str, content: &[u8]) -> Input {
    let path = e.dd.root().parent().unwrap().join(name);
    std::fs::write(&path, gz(&tar(&[T::File("app/main", 0o755, content)]))).unwrap();
    Input::Upload {
        path,
        file_name: Some(name.into()),
    }
}

async fn create(e: &Env, app: &str, content: &[u8]) -> Result<ReleaseRow, ReleaseError> {
    let input = upload(e, &format!("{app}-{}.tar.gz", content.len()), content);
    create_release(&e.dd, &e.store, &e.signer, &e.opts, new(app), input).await
}

/// The names in `releases/`, sorted.
fn files(dd: &DataDir) -> Vec<String> {
    let mut v = left_in(&dd.releases_dir());
    v.sort();
    v
}

#[tokio::test]
async fn numbers_grow_per_app_and_manifests_verify() {
    let e = env().await;
    let mut numbers = Vec::new();
    for content in [&b"one"[..], b"two!", b"three"] {
        numbers.push(create(&e, "web", content).await.unwrap().release);
    }
    assert_eq!(numbers, vec![1, 2, 3]);
    let other = create(&e, "api", b"one").await.unwrap();
    assert_eq!(other.release, 1);

    let row = show(&e.store, other.id).await.unwrap();
    assert_eq!(row.app, "api");
    assert_eq!(row.key_id, e.signer.id().to_string());
    assert_eq!(
        row.source,
        ReleaseSource::Upload {
            file_name: Some("api-3.tar.gz".into())
        }
    );
    let by_number = e.store.release_by_number("web", 2).await.unwrap().unwrap();
    assert_eq!(by_number.entries, 2); // app/ (implicit) and app/main

    // The stored manifest verifies against release.pub and describes the stored archive.
    let pinned = setup::release_public_key(&e.dd).unwrap();
    let signed = signed_manifest(&e.dd, &by_number).await.unwrap();
    let m = verify_manifest(&signed, &[pinned]).unwrap();
    assert_eq!((m.app.as_str(), m.release), ("web", 2));
    let digest = storage::parse_digest(&by_number.archive_sha256).unwrap();
    assert_eq!(m.archive_sha256, digest);
    let (file, len) = storage::open_archive(&e.dd, &digest).unwrap();
    drop(file);
    assert_eq!(len, m.archive_size);
    assert_eq!(m.hooks, vec!["post_switch".to_owned()]);

    // Newest first; one app's.
    let all: Vec<_> = list(&e.store, None)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.app.clone(), r.release))
        .collect();
    assert_eq!(
        all,
        vec![
            ("api".into(), 1),
            ("web".into(), 3),
            ("web".into(), 2),
            ("web".into(), 1)
        ]
    );
    assert_eq!(list(&e.store, Some("api")).await.unwrap().len(), 1);
    // web's "one" and api's "one" share an archive: 3 archives, 4 manifests.
    let names = files(&e.dd);
    assert_eq!(names.iter().filter(|n| n.ends_with(".tar.gz")).count(), 3);
    assert_eq!(names.iter().filter(|n| n.ends_with(".manifest")).count(), 4);
}

#[tokio::test]
async fn the_same_archive_twice_is_refused() {
    let e = env().await;
    let first = create(&e, "web", b"same").await.unwrap();
    let before = files(&e.dd);
    let err = create(&e, "web", b"same").await.unwrap_err();
    assert!(
        matches!(&err, ReleaseError::AlreadyExists { release: 1, id, .. } if *id == first.id),
        "{err}"
    );
    assert!(err.to_string().contains("release 1"), "{err}");
    assert_eq!(files(&e.dd), before, "nothing added");
    // The refused attempt used no number.
    assert_eq!(create(&e, "web", b"other").await.unwrap().release, 2);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let e = env().await;
    let mut bad = new("Web App");
    let input = upload(&e, "x.tar.gz", b"x");
    let err = create_release(
        &e.dd,
        &e.store,
        &e.signer,
        &e.opts,
        bad.clone(),
        input.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReleaseError::Invalid(_)), "{err}");
    bad.app = "web".into();
    bad.hooks = vec!["rm_rf".into()];
    let err = create_release(&e.dd, &e.store, &e.signer, &e.opts, bad, input)
        .await
        .unwrap_err();
    assert!(matches!(err, ReleaseError::Invalid(_)), "{err}");
    // A refused upload leaves nothing either.
    let path = e.dd.root().parent().unwrap().join("evil.tar");
    std::fs::write(&path, tar(&[T::File("../evil", 0o644, b"x")])).unwrap();
    let input = Input::Upload {
        path,
        file_name: None,
    };
    let err = create_release(&e.dd, &e.store, &e.signer, &e.opts, new("web"), input)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReleaseError::Intake(IntakeError::UnsafePath { .. })),
        "{err}"
    );
    assert!(files(&e.dd).is_empty());
    assert!(list(&e.store, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_insert_removes_the_files() {
    let e = env().await;
    create(&e, "web", b"kept").await.unwrap();
    let before = files(&e.dd);
    writing!(e.store, |ex| sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON releases BEGIN SELECT RAISE(ABORT, 'no'); END",
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let err = create(&e, "web", b"lost").await.unwrap_err();
    assert!(matches!(err, ReleaseError::Store(_)), "{err}");
    assert_eq!(files(&e.dd), before);
    writing!(e.store, |ex| sqlx::query("DROP TRIGGER refuse")
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
    .unwrap();
    // The number was given back with the rolled-back transaction.
    assert_eq!(create(&e, "web", b"lost").await.unwrap().release, 2);
}

#[tokio::test]
async fn deleting_keeps_shared_archives_and_numbers_never_return() {
    let e = env().await;
    let web1 = create(&e, "web", b"shared").await.unwrap();
    let web2 = create(&e, "web", b"second").await.unwrap();
    let api1 = create(&e, "api", b"shared").await.unwrap();
    let archive = |r: &ReleaseRow| {
        e.dd.release_archive(&storage::parse_digest(&r.archive_sha256).unwrap())
    };
    let manifest = |r: &ReleaseRow| {
        e.dd.release_manifest(&storage::parse_digest(&r.manifest_sha256).unwrap())
    };

    let gone = delete_release(&e.dd, &e.store, web1.id).await.unwrap();
    assert_eq!(gone.id, web1.id);
    assert!(!manifest(&web1).exists());
    assert!(archive(&web1).exists(), "api's release still uses it");
    delete_release(&e.dd, &e.store, api1.id).await.unwrap();
    assert!(!archive(&api1).exists());

    delete_release(&e.dd, &e.store, web2.id).await.unwrap();
    assert!(files(&e.dd).is_empty(), "{:?}", files(&e.dd));
    let err = delete_release(&e.dd, &e.store, web2.id).await.unwrap_err();
    assert!(matches!(err, ReleaseError::NotFound(_)), "{err}");
    // Release 2 was deleted, yet the next one is 3: a device may have installed 2.
    assert_eq!(create(&e, "web", b"third").await.unwrap().release, 3);
}

#[tokio::test]
async fn the_sweep_tidies_up_after_a_crash() {
    let e = env().await;
    let kept = create(&e, "web", b"kept").await.unwrap();
    let dir = e.dd.releases_dir();
    let kept_manifest =
        e.dd.release_manifest(&storage::parse_digest(&kept.manifest_sha256).unwrap());
    // A deletion that never committed: its manifest set aside, the row still there.
    let set_aside = storage::begin_removal(std::slice::from_ref(&kept_manifest)).unwrap();
    std::mem::forget(set_aside);
    assert!(!kept_manifest.exists());
    // Files of a creation that never committed, an old temp file and a fresh one.
    std::fs::write(dir.join(format!("{}.tar.gz", "ab".repeat(32))), b"x").unwrap();
    std::fs::write(dir.join(format!("{}.manifest", "cd".repeat(32))), b"x").unwrap();
    std::fs::write(dir.join(".release-old.tmp"), b"x").unwrap();
    std::fs::create_dir(dir.join(".git-old")).unwrap();
    std::fs::write(dir.join("unrelated.txt"), b"x").unwrap();

    let swept = sweep(&e.dd, &e.store, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        swept,
        Swept {
            temp: 0,
            orphans: 2,
            restored: 1
        }
    );
    assert!(kept_manifest.exists());
    // Temp files younger than the threshold stay; with none, they go.
    let swept = sweep(&e.dd, &e.store, Duration::ZERO).await.unwrap();
    assert_eq!(swept.temp, 2);
    let mut expected = vec![
        format!("{}.tar.gz", kept.archive_sha256),
        format!("{}.manifest", kept.manifest_sha256),
        "unrelated.txt".to_owned(),
    ];
    expected.sort();
    assert_eq!(files(&e.dd), expected);
    let signed = signed_manifest(&e.dd, &kept).await.unwrap();
    verify_manifest(&signed, &[setup::release_public_key(&e.dd).unwrap()]).unwrap();
}

#[tokio::test]
async fn a_tampered_manifest_file_is_noticed() {
    let e = env().await;
    let row = create(&e, "web", b"x").await.unwrap();
    let path =
        e.dd.release_manifest(&storage::parse_digest(&row.manifest_sha256).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = signed_manifest(&e.dd, &row).await.unwrap_err();
    assert!(
        matches!(err, ReleaseError::Storage(StorageError::Mismatch(_))),
        "{err}"
    );
}

#[tokio::test]
async fn a_release_from_git() {
    let e = env().await;
    let src = e.dd.root().parent().unwrap().join("src");
    std::fs::create_dir(&src).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&src)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q"]);
    std::fs::write(src.join("main.py"), "print('hi')\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "x"]);
    let rev = git(&["rev-parse", "HEAD"]);
    let opts = IntakeOptions {
        git: GitOptions {
            allow_file_urls: true,
            ..GitOptions::default()
        },
        ..e.opts.clone()
    };
    let url = format!("file://{}", src.display());
    let input = Input::Git {
        url: url.clone(),
        rev: rev.clone(),
    };
    let row = create_release(&e.dd, &e.store, &e.signer, &opts, new("web"), input)
        .await
        .unwrap();
    assert_eq!(row.source, ReleaseSource::Git { url, rev });
    assert_eq!(row.entries, 1);
    let hidden: Vec<_> = files(&e.dd)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

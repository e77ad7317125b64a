//! Backups made from a real data dir (`setup::init`), read back, damaged and restored.

use crate::store::db::{reading, writing};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::setup;
use crate::store::now_ms;

struct Fixture {
    _tmp: tempfile::TempDir,
    dd: DataDir,
    store: Store,
    out: PathBuf,
    root: PathBuf,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let dd = DataDir::new(root.join("data"));
    setup::init(dd.root(), &[], None).await.unwrap();
    let store = Store::open(&dd.database(), false).await.unwrap();
    store
        .insert_token(&crate::store::NewToken {
            id: "tok1",
            secret_hash: "h",
            name: None,
            labels: &Default::default(),
            expires_at: now_ms() + 3_600_000,
            max_uses: None,
            require_approval: false,
        })
        .await
        .unwrap();
    // A device with a command waiting to go out and one it already took.
    writing!(store, |ex| sqlx::query(
        "INSERT INTO devices (id, labels, enrolled_at) VALUES ('pi-1', '{}', 1)"
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    for (id, status) in [("c-queued", "queued"), ("c-accepted", "accepted")] {
        writing!(store, |ex| sqlx::query(
            "INSERT INTO commands (id, device_id, action, action_kind, status, created_at, \
             expires_at, answer_timeout_ms) VALUES ($1, 'pi-1', '\"Ping\"', 'ping', $2, 1, $3, 1000)",
        )
        .bind(id)
        .bind(status)
        .bind(now_ms() + 3_600_000)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    Fixture {
        out: root.join("backups"),
        root,
        _tmp: tmp,
        dd,
        store,
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn create_list_verify_restore() {
    let f = fixture().await;
    let made = create(&f.dd, &f.store, &f.out, None).await.unwrap();
    assert_eq!(mode(&f.out), 0o700);
    assert_eq!(mode(&made.path), 0o600);
    let name = made.path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(PREFIX) && name.ends_with(".tar"), "{name}");
    let sum = fs::read_to_string(checksum_path(&made.path)).unwrap();
    assert_eq!(sum, format!("{}  {name}\n", made.sha256));
    assert_eq!(
        made.metadata.schema_version,
        snapshot::latest_schema_version()
    );
    assert!(made.metadata.files.iter().any(|f| f == "ca.key"));
    // Nothing temporary is left beside it.
    let names: Vec<_> = fs::read_dir(&f.out).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let listed = list(&f.out).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].encrypted && !listed[0].verified);
    assert_eq!(listed[0].size, made.size);

    let v = verify(&made.path, None).await.unwrap();
    assert_eq!(v.metadata, made.metadata);
    assert!(list(&f.out).unwrap()[0].verified);

    let target = f.root.join("restored");
    let r = restore(&made.path, None, &target, &Revocations::AcceptLost)
        .await
        .unwrap();
    assert_eq!(r.tokens_revoked, 1);
    assert_eq!(
        r.commands_expired, 1,
        "the queued command is not sent again blindly"
    );
    let restored = Store::open(&DataDir::new(&target).database(), false)
        .await
        .unwrap();
    for (id, want) in [("c-queued", "expired"), ("c-accepted", "accepted")] {
        let status: String = reading!(restored, |ex| sqlx::query_scalar(
            "SELECT status FROM commands WHERE id = $1"
        )
        .bind(id)
        .fetch_one(ex)
        .await)
        .unwrap();
        assert_eq!(status, want, "{id}");
    }
    restored.close().await;
    assert_eq!(mode(&target), 0o700);
    for p in DataDir::new(&target).secret_files() {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    assert_eq!(
        fs::read(DataDir::new(&target).ca_key()).unwrap(),
        fs::read(f.dd.ca_key()).unwrap()
    );
    let restored = Store::open(&DataDir::new(&target).database(), false)
        .await
        .unwrap();
    let tokens = restored.list_tokens().await.unwrap();
    assert!(tokens.iter().all(|t| t.revoked_at.is_some()), "{tokens:?}");
    restored.close().await;
    // The live data dir's token is untouched.
    assert!(f.store.list_tokens().await.unwrap()[0].revoked_at.is_none());

    // A second restore into the now full directory is refused.
    let err = restore(&made.path, None, &target, &Revocations::AcceptLost)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::TargetNotEmpty(_)), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");
    f.store.close().await;
}

#[tokio::test]
async fn an_empty_target_dir_is_fine_and_a_full_one_is_left_alone() {
    let f = fixture().await;
    // An existing output directory keeps its mode.
    fs::create_dir(&f.out).unwrap();
    fs::set_permissions(&f.out, fs::Permissions::from_mode(0o755)).unwrap();
    let made = create(&f.dd, &f.store, &f.out, None).await.unwrap();
    assert_eq!(mode(&f.out), 0o755);
    assert_eq!(mode(&made.path), 0o600);
    let empty = f.root.join("empty");
    fs::create_dir(&empty).unwrap();
    restore(&made.path, None, &empty, &Revocations::AcceptLost)
        .await
        .unwrap();
    let full = f.root.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep.txt"), b"mine").unwrap();
    assert!(matches!(
        restore(&made.path, None, &full, &Revocations::AcceptLost).await,
        Err(BackupError::TargetNotEmpty(_))
    ));
    assert_eq!(fs::read(full.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);
    f.store.close().await;
}

#[tokio::test]
async fn a_damaged_backup_is_refused_and_nothing_is_written() {
    let f = fixture().await;
    let made = create(&f.dd, &f.store, &f.out, None).await.unwrap();
    let mut bytes = fs::read(&made.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&made.path, &bytes).unwrap();
    let err = verify(&made.path, None).await.unwrap_err();
    assert!(matches!(err, BackupError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let target = f.root.join("restored");
    let err = restore(&made.path, None, &target, &Revocations::AcceptLost)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::Checksum { .. }), "{err}");
    assert!(!target.exists());
    // No staging directory is left beside the target.
    let left: Vec<_> = fs::read_dir(&f.root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A missing checksum is refused too.
    fs::remove_file(checksum_path(&made.path)).unwrap();
    let err = verify(&made.path, None).await.unwrap_err();
    assert!(matches!(err, BackupError::NoChecksum(_)), "{err}");
    f.store.close().await;
}

#[tokio::test]
async fn an_encrypted_backup_round_trips_with_its_identity() {
    let f = fixture().await;
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let made = create(&f.dd, &f.store, &f.out, Some(&recipient))
        .await
        .unwrap();
    assert!(made.path.to_string_lossy().ends_with(".tar.age"));
    let raw = fs::read(&made.path).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    assert!(list(&f.out).unwrap()[0].encrypted);
    let err = verify(&made.path, None).await.unwrap_err();
    assert!(matches!(err, BackupError::NeedsIdentity(_)), "{err}");
    let id_file = f.root.join("id.txt");
    {
        use age::secrecy::ExposeSecret;
        let mut w = fs::File::create(&id_file).unwrap();
        writeln!(w, "{}", id.to_string().expose_secret()).unwrap();
    }
    let other = f.root.join("other.txt");
    {
        use age::secrecy::ExposeSecret;
        let o = age::x25519::Identity::generate();
        fs::write(&other, format!("{}\n", o.to_string().expose_secret())).unwrap();
    }
    let err = verify(&made.path, Some(&other)).await.unwrap_err();
    assert!(matches!(err, BackupError::Decrypt { .. }), "{err}");
    verify(&made.path, Some(&id_file)).await.unwrap();
    let target = f.root.join("restored");
    restore(
        &made.path,
        Some(&id_file),
        &target,
        &Revocations::AcceptLost,
    )
    .await
    .unwrap();
    assert_eq!(
        fs::read(DataDir::new(&target).command_key()).unwrap(),
        fs::read(f.dd.command_key()).unwrap()
    );
    assert!(matches!(
        create(&f.dd, &f.store, &f.out, Some("age1nope")).await,
        Err(BackupError::Recipient(_))
    ));
    f.store.close().await;
}

/// Writes a tar with the given entries (name, data) and its checksum file.
fn handmade(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(format!("{PREFIX}20000101T000000Z.tar"));
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        // Written by hand: the tar crate itself refuses names with `..`.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    fs::write(&path, tar.into_inner().unwrap()).unwrap();
    let sum = sha256_file(&path).unwrap();
    fs::write(checksum_path(&path), format!("{sum}  x\n")).unwrap();
    path
}

#[tokio::test]
async fn a_tar_that_is_not_a_backup_is_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<Vec<(&str, &[u8])>> = vec![
        vec![],
        vec![("pifleet.db", b"x")],
        vec![("metadata.json", b"{}")],
        vec![("metadata.json", b"not json")],
        vec![("../evil", b"x")],
        vec![("releases/../../evil", b"x")],
    ];
    for entries in cases {
        let path = handmade(tmp.path(), &entries);
        let err = verify(&path, None).await.unwrap_err();
        assert!(
            matches!(err, BackupError::Malformed { .. }),
            "{entries:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_backup_from_a_newer_schema_is_refused() {
    let f = fixture().await;
    writing!(f.store, |ex| sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'future', TRUE, x'00', 0)",
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let made = create(&f.dd, &f.store, &f.out, None).await.unwrap();
    let target = f.root.join("restored");
    let err = restore(&made.path, None, &target, &Revocations::AcceptLost)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::TooNew { backup: 9999, .. }),
        "{err}"
    );
    assert!(!target.exists());
    f.store.close().await;
}

#[test]
fn names_and_pruning() {
    assert_eq!(stamp(0), "19700101T000000Z");
    assert_eq!(stamp(1_796_543_999_000), "20261206T075959Z");
    assert!(allowed_name("ca.key") && allowed_name("releases/ab.tar.gz"));
    for bad in [
        "/etc/passwd",
        "../x",
        "releases/",
        "releases/a/b",
        "releases/.x",
        "serve.json",
    ] {
        assert!(!allowed_name(bad), "{bad}");
    }
    let tmp = tempfile::tempdir().unwrap();
    for s in ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"] {
        let p = tmp.path().join(format!("{PREFIX}{s}.tar"));
        fs::write(&p, b"x").unwrap();
        fs::write(checksum_path(&p), b"y").unwrap();
    }
    fs::write(tmp.path().join("unrelated.txt"), b"z").unwrap();
    let removed = prune(tmp.path(), 2).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(removed[0].to_string_lossy().contains("20260101"));
    let left = list(tmp.path()).unwrap();
    assert_eq!(left.len(), 2);
    assert!(tmp.path().join("unrelated.txt").exists());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 5);
}

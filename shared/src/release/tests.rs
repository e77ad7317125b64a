use proptest::prelude::*;

use super::*;
use crate::signing::TrustedKey;

fn file(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o644,
        kind: EntryKind::File {
            size,
            sha256: [7; 32],
        },
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o777,
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

fn manifest(entries: Vec<Entry>) -> Manifest {
    Manifest {
        app: "web-app".into(),
        version: "1.4.2".into(),
        release: 3,
        arches: vec!["aarch64".into()],
        archive_sha256: [0xab; 32],
        archive_size: 100,
        unpacked_size: 1_000,
        entries,
        health: HealthSpec::default(),
        hooks: vec!["pre_start".into()],
        created_at_ms: 1,
    }
}

fn signer(n: u8) -> ReleaseSigner {
    ReleaseSigner::from_seed(&[n; 32]).unwrap()
}

#[test]
fn entry_paths_stay_inside() {
    for ok in ["a", "bin/app", "a.b/c-d_e", "deep/er/still"] {
        assert_eq!(check_entry_path(ok), Ok(()), "{ok}");
    }
    for (bad, why) in [
        ("", PathError::Empty),
        ("/etc/passwd", PathError::Absolute),
        ("../x", PathError::Parent),
        ("a/../../x", PathError::Parent),
        ("a//b", PathError::EmptyComponent),
        ("./a", PathError::EmptyComponent),
        ("a/", PathError::EmptyComponent),
        ("a\\..\\b", PathError::Character),
        ("a\0b", PathError::Character),
        ("a\nb", PathError::Character),
    ] {
        assert_eq!(check_entry_path(bad), Err(why), "{bad:?}");
    }
    assert_eq!(
        check_entry_path(&"a".repeat(256)),
        Err(PathError::ComponentTooLong)
    );
    assert_eq!(
        check_entry_path(&"a/".repeat(3000)),
        Err(PathError::TooLong)
    );
}

#[test]
fn link_targets_stay_inside() {
    assert_eq!(check_link_target("lib/current", "../lib-1.2"), Ok(()));
    assert_eq!(check_link_target("a", "b/c"), Ok(()));
    assert_eq!(check_link_target("a/b/c", "../../x"), Ok(()));
    assert_eq!(check_link_target("a", "."), Ok(()));
    assert_eq!(check_link_target("a", ".."), Err(PathError::Escapes));
    assert_eq!(
        check_link_target("a/b", "../../etc"),
        Err(PathError::Escapes)
    );
    assert_eq!(
        check_link_target("a", "/etc/shadow"),
        Err(PathError::Absolute)
    );
    // `..` after a name climbs from wherever that name points: refused.
    assert_eq!(check_link_target("a", "r/.."), Err(PathError::Parent));
    assert_eq!(check_link_target("x/y", "b/../.."), Err(PathError::Parent));
    assert_eq!(check_link_target("a", ""), Err(PathError::Empty));
}

#[test]
fn a_valid_manifest_passes_and_names_its_folder() {
    let m = manifest(vec![
        Entry {
            path: "bin".into(),
            mode: 0o755,
            kind: EntryKind::Dir,
        },
        file("bin/app", 500),
        link("app", "bin/app"),
    ]);
    assert_eq!(m.validate(), Ok(()));
    assert_eq!(m.dir_name(), "3-abababab");
}

#[test]
fn every_rule_is_checked() {
    let cases: Vec<(Manifest, &str)> = vec![
        (
            Manifest {
                app: "Web".into(),
                ..manifest(vec![])
            },
            "app name",
        ),
        (
            Manifest {
                version: String::new(),
                ..manifest(vec![])
            },
            "version",
        ),
        (
            Manifest {
                release: 0,
                ..manifest(vec![])
            },
            "release number",
        ),
        (
            Manifest {
                arches: vec!["x86-64".into()],
                ..manifest(vec![])
            },
            "architectures",
        ),
        (manifest(vec![file("../x", 1)]), "'..'"),
        (manifest(vec![file("a", 1), file("a", 1)]), "listed twice"),
        (
            manifest(vec![Entry {
                mode: 0o4755,
                ..file("a", 1)
            }]),
            "setuid",
        ),
        (manifest(vec![link("l", "../../etc")]), "leaves the release"),
        (
            manifest(vec![link("l", "d"), file("l/x", 1)]),
            "inside a symbolic link",
        ),
        (
            manifest(vec![file("a", 600), file("b", 600)]),
            "unpacked size",
        ),
        (
            Manifest {
                hooks: vec!["rm -rf".into()],
                ..manifest(vec![])
            },
            "unknown hook",
        ),
        (
            Manifest {
                health: HealthSpec {
                    start_timeout_s: 0,
                    ..HealthSpec::default()
                },
                ..manifest(vec![])
            },
            "start_timeout_s",
        ),
        (
            Manifest {
                health: HealthSpec {
                    probe: Some(Probe::Http {
                        port: 8080,
                        path: "healthz".into(),
                    }),
                    ..HealthSpec::default()
                },
                ..manifest(vec![])
            },
            "starts with '/'",
        ),
    ];
    for (m, want) in cases {
        let e = m.validate().expect_err(want).to_string();
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    }
}

#[test]
fn signed_manifests_verify_only_with_a_pinned_key() {
    let m = manifest(vec![file("a", 10)]);
    let s = signer(1).sign(&m).unwrap();
    let pinned = [signer(9).public().clone(), signer(1).public().clone()];
    assert_eq!(verify_manifest(&s, &pinned).unwrap(), m);

    // Another release key.
    assert!(matches!(
        verify_manifest(&s, &[signer(2).public().clone()]),
        Err(ManifestError::UnknownKey)
    ));
    // A changed body, a changed signature, a key id swapped to another pinned key.
    let mut t = s.clone();
    t.body[5] ^= 1;
    assert!(matches!(
        verify_manifest(&t, &pinned),
        Err(ManifestError::BadSignature)
    ));
    let mut t = s.clone();
    t.signature[0] ^= 1;
    assert!(matches!(
        verify_manifest(&t, &pinned),
        Err(ManifestError::BadSignature)
    ));
    let mut t = s.clone();
    t.key_id = signer(9).id();
    assert!(matches!(
        verify_manifest(&t, &pinned),
        Err(ManifestError::BadSignature)
    ));
    let mut t = s;
    t.signature.truncate(10);
    assert!(matches!(
        verify_manifest(&t, &pinned),
        Err(ManifestError::BadSignature)
    ));
}

#[test]
fn a_command_signature_over_the_same_bytes_is_no_manifest_signature() {
    // The same key signing the bare bytes (as commands are signed) does not verify.
    let m = manifest(vec![]);
    let s = signer(1).sign(&m).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
    let forged = SignedManifest {
        signature: pair.sign(&s.body).as_ref().to_vec(),
        ..s
    };
    assert!(matches!(
        verify_manifest(&forged, &[signer(1).public().clone()]),
        Err(ManifestError::BadSignature)
    ));
}

#[test]
fn signing_refuses_an_invalid_manifest() {
    let m = manifest(vec![file("/abs", 1)]);
    assert!(matches!(signer(1).sign(&m), Err(ManifestError::Invalid(_))));
}

#[test]
fn the_pinned_key_reads_from_pem_like_the_command_key() {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let sk = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let priv_pem = sk.to_pkcs8_pem(Default::default()).unwrap();
    let pub_pem = sk
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let signer = ReleaseSigner::from_pkcs8_pem(&priv_pem).unwrap();
    let pinned = TrustedKey::from_pem(&pub_pem).unwrap();
    assert_eq!(signer.public(), &pinned);
    assert!(format!("{signer:?}").contains("redacted"));
}

proptest! {
    /// Whatever a path looks like, a path that passes never climbs out or starts at `/`.
    #[test]
    fn accepted_paths_never_escape(path in "[a./\\\\]{0,12}") {
        if check_entry_path(&path).is_ok() {
            prop_assert!(!path.starts_with('/'));
            prop_assert!(path.split('/').all(|p| p != ".." && p != "." && !p.is_empty()));
        }
    }

    /// An accepted link target, resolved lexically from its link's folder, stays at or
    /// below the root.
    #[test]
    fn accepted_link_targets_stay_below_the_root(
        link in "[ab]{1,2}(/[ab]{1,2}){0,3}",
        target in "(\\.\\.|\\.|[ab]{1,2})(/(\\.\\.|\\.|[ab]{1,2})){0,5}",
    ) {
        if check_link_target(&link, &target).is_ok() {
            let mut depth: i64 = link.split('/').count() as i64 - 1;
            for part in target.split('/') {
                match part {
                    ".." => depth -= 1,
                    "." | "" => {}
                    _ => depth += 1,
                }
                prop_assert!(depth >= 0);
            }
        }
    }

    /// Verification never panics on arbitrary bytes.
    #[test]
    fn arbitrary_signed_manifests_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let s = SignedManifest { key_id: signer(1).id(), body, signature: vec![0; 64] };
        prop_assert!(verify_manifest(&s, &[signer(1).public().clone()]).is_err());
    }
}

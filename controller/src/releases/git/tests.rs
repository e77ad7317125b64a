//! Releases from git with the system `git`: a local repository fetched by `file://` URL and
//! full SHA, its hooks never run; bad revisions and URLs refused with clear errors; a git
//! that hangs killed at the deadline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pifleet_shared::release::{Entry, EntryKind};

use super::*;
use crate::releases::intake::testkit::{left_in, small};

/// Runs the test's own git (not the code under test) with no user configuration.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository with a file, an executable, a symlink and a folder, and hooks that would
/// leave `marker` behind if anything ran them. Returns (repo dir, commit SHA, marker).
fn repo(root: &Path) -> (PathBuf, String, PathBuf) {
    let src = root.join("src");
    std::fs::create_dir(&src).unwrap();
    git(&src, &["init", "-q"]);
    std::fs::write(src.join("README"), "hello\n").unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/x.txt"), "x\n").unwrap();
    std::os::unix::fs::symlink("run.sh", src.join("current")).unwrap();
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "first"]);
    let marker = root.join("hook-ran");
    for hook in [
        "post-checkout",
        "reference-transaction",
        "post-merge",
        "pre-auto-gc",
    ] {
        let path = src.join(".git/hooks").join(hook);
        std::fs::write(&path, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sha = git(&src, &["rev-parse", "HEAD"]);
    (src, sha, marker)
}

fn local() -> GitOptions {
    GitOptions {
        allow_file_urls: true,
        ..GitOptions::default()
    }
}

#[test]
fn a_commit_is_fetched_by_full_sha_and_repacked() {
    let root = tempfile::tempdir().unwrap();
    let (src, sha, marker) = repo(root.path());
    let work = root.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let url = format!("file://{}", src.display());
    let p = fetch_revision(&url, &sha, &small(), &local(), &work).unwrap();
    let entries: Vec<(&str, u32, &EntryKind)> = p
        .entries
        .iter()
        .map(|e: &Entry| (e.path.as_str(), e.mode, &e.kind))
        .collect();
    let names: Vec<_> = entries.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        names,
        vec![
            ("README", 0o644),
            ("current", 0o777),
            ("lib", 0o755),
            ("lib/x.txt", 0o644),
            ("run.sh", 0o755),
        ]
    );
    assert_eq!(
        entries[1].2,
        &EntryKind::Symlink {
            target: "run.sh".into()
        }
    );
    assert!(!marker.exists(), "a hook ran");
    // Only the repacked archive is left: the git work dir is gone.
    assert_eq!(left_in(&work).len(), 1, "{:?}", left_in(&work));
    drop(p);
    assert!(left_in(&work).is_empty());
    // The same commit twice gives the same archive.
    let a = fetch_revision(&url, &sha, &small(), &local(), &work).unwrap();
    let b = fetch_revision(&url, &sha.to_uppercase(), &small(), &local(), &work).unwrap();
    assert_eq!(a.archive_sha256, b.archive_sha256);
    assert!(!marker.exists(), "a hook ran");
}

#[test]
fn short_unknown_and_malformed_revisions() {
    let root = tempfile::tempdir().unwrap();
    let (src, sha, _) = repo(root.path());
    let url = format!("file://{}", src.display());
    let work = root.path();
    for bad in [&sha[..12], "HEAD", "main", "", &format!("{}zz", &sha[..38])] {
        let err = fetch_revision(&url, bad, &small(), &local(), work).unwrap_err();
        assert!(matches!(err, GitError::BadRevision(_)), "{bad}: {err}");
        assert!(err.to_string().contains("full commit SHA"), "{err}");
    }
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = fetch_revision(&url, unknown, &small(), &local(), work).unwrap_err();
    assert!(
        matches!(&err, GitError::UnknownRevision { rev, .. } if rev == unknown),
        "{err}"
    );
    assert!(err.to_string().contains(unknown), "{err}");
    // Nothing left behind but the source repository.
    assert_eq!(left_in(work), vec!["src".to_owned()]);
}

#[test]
fn urls_are_checked_before_git_runs() {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let work = tempfile::tempdir().unwrap();
    for (url, allow_file) in [
        ("--upload-pack=touch /tmp/x", true),
        ("-oProxyCommand=x", true),
        ("file:///srv/repo", false),
        ("http://example.invalid/repo.git", true),
        ("git://example.invalid/repo.git", true),
        ("ext::sh -c touch% /tmp/pwned", true),
        ("ext::foo", true),
        ("/srv/repo", true),
        ("https://example.invalid/a b", true),
        ("", true),
        ("ssh://-oProxyCommand=touch%20x/repo", true),
        ("git@-oProxyCommand=x:repo", true),
        ("-oProxyCommand=x@host:repo", true),
    ] {
        let opts = GitOptions {
            allow_file_urls: allow_file,
            ..GitOptions::default()
        };
        let err = fetch_revision(url, sha, &small(), &opts, work.path()).unwrap_err();
        assert!(matches!(err, GitError::BadUrl { .. }), "{url}: {err}");
    }
    for ok in [
        "https://example.invalid/repo.git",
        "ssh://git@example.invalid/repo.git",
        "git@example.invalid:org/repo.git",
    ] {
        check_url(ok, false).unwrap();
    }
    assert!(left_in(work.path()).is_empty());
}

#[test]
fn credentials_never_show() {
    assert_eq!(
        redact_url("https://user:s3cret@example.invalid/r.git"),
        "https://***@example.invalid/r.git"
    );
    assert_eq!(
        redact_url("https://token@example.invalid/r.git"),
        "https://***@example.invalid/r.git"
    );
    assert_eq!(redact_url("git@host:r.git"), "git@host:r.git");
    let err = check_url("-https://user:s3cret@x/", true).unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn a_missing_git_is_named() {
    let work = tempfile::tempdir().unwrap();
    let opts = GitOptions {
        program: PathBuf::from("/nonexistent/git"),
        ..local()
    };
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let err = fetch_revision("file:///x", sha, &small(), &opts, work.path()).unwrap_err();
    assert!(matches!(err, GitError::GitMissing), "{err}");
    assert!(left_in(work.path()).is_empty());
}

#[test]
fn a_hanging_git_is_killed_at_the_deadline() {
    let work = tempfile::tempdir().unwrap();
    // A stand-in for git that never finishes, with a child of its own.
    let fake = work.path().join("fake-git");
    std::fs::write(&fake, "#!/bin/sh\nsleep 60 &\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let opts = GitOptions {
        program: fake,
        timeout: Duration::from_millis(300),
        ..local()
    };
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let started = Instant::now();
    let err = fetch_revision("file:///x", sha, &small(), &opts, &out).unwrap_err();
    assert!(
        matches!(err, GitError::TimedOut { step: "init", .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(left_in(&out).is_empty());
}

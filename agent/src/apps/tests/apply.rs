//! Whole applies through the deployer: install and commit, the anti-rollback floor,
//! rollbacks to kept releases, pruning, hooks, and the health gate's verdicts.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use pifleet_shared::release::Probe;

use super::*;
use crate::apps::journal::Phase;
use crate::apps::recover::INTERRUPTED;

fn committed(o: Result<Outcome, ApplyError>, release: u64) {
    match o {
        Ok(Outcome::Committed { release: r, .. }) if r == release => {}
        other => panic!("expected release {release} committed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_good_release_installs_and_goes_live() {
    let rig = Rig::new();
    let r = Release::numbered(1);
    committed(rig.install(&r).await, 1);
    assert_eq!(rig.current(), Some(r.dir()));
    assert_eq!(
        fs::read_link(rig.layout.current_link()).unwrap(),
        Path::new("releases").join(r.dir())
    );
    assert_eq!(
        fs::read_to_string(rig.layout.current_link().join("etc/app.toml")).unwrap(),
        "release = 1\n"
    );
    assert!(rig.layout.shared().is_dir());
    assert_eq!(rig.systemd.calls(), ["restart web.service"]);
    let state = rig.state();
    assert_eq!(state.committed, 1);
    assert_eq!(
        state.phase,
        Phase::Committed {
            current: Some(r.dir())
        }
    );
    // The same release again: nothing to do, no restart.
    assert_eq!(
        rig.install(&r).await.unwrap(),
        Outcome::AlreadyCurrent {
            release: 1,
            dir: r.dir()
        }
    );
    assert_eq!(rig.systemd.calls().len(), 1);
}

#[tokio::test]
async fn what_is_not_allowlisted_is_refused_before_anything_changes() {
    let rig = Rig::new();
    let other = Release::numbered(1).with(|m| m.app = "other".into());
    let e = rig.install(&other).await.unwrap_err();
    assert!(
        matches!(e, ApplyError::NotAllowlisted(ref a) if a == "other"),
        "{e}"
    );
    let hook = Release::numbered(1).with(|m| m.hooks = vec!["pre_start".into()]);
    let e = rig.install(&hook).await.unwrap_err();
    assert!(matches!(e, ApplyError::HookNotDeclared { .. }), "{e}");
    let probe = Release::numbered(1).with(|m| m.health.probe = Some(Probe::Command));
    let e = rig.install(&probe).await.unwrap_err();
    assert!(matches!(e, ApplyError::ProbeNotDeclared(_)), "{e}");
    assert!(!rig.layout.root().exists());
    assert!(rig.systemd.calls().is_empty());
}

#[tokio::test]
async fn a_refused_archive_changes_nothing() {
    let rig = Rig::new();
    let one = Release::numbered(1);
    committed(rig.install(&one).await, 1);
    let before = rig.state();
    let mut bad = Release::numbered(2);
    let evil = archive(&[file("etc/app.toml", "evil")]);
    bad.archive = evil;
    let e = rig.install(&bad).await.unwrap_err();
    assert!(matches!(e, ApplyError::Unpack(_)), "{e}");
    assert_eq!(rig.current(), Some(one.dir()));
    assert_eq!(rig.releases(), [one.dir()]);
    assert_eq!(rig.state(), before);
    assert_eq!(rig.systemd.calls().len(), 1);
}

#[tokio::test]
async fn too_little_space_is_refused_up_front() {
    let rig = Rig::with(|c| c.reserve_bytes = u64::MAX / 2);
    let e = rig.install(&Release::numbered(1)).await.unwrap_err();
    assert!(
        matches!(e, ApplyError::Layout(LayoutError::NoSpace { .. })),
        "{e}"
    );
    assert!(rig.releases().is_empty());
    assert_eq!(rig.state(), AppState::default());
}

#[tokio::test]
async fn lower_releases_are_refused_unless_rolled_back_to_a_kept_one() {
    let rig = Rig::new();
    let (one, two) = (Release::numbered(1), Release::numbered(2));
    committed(rig.install(&one).await, 1);
    committed(rig.install(&two).await, 2);
    let e = rig.install(&one).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApplyError::Lower {
                release: 1,
                committed: 2
            }
        ),
        "{e}"
    );
    assert_eq!(rig.current(), Some(two.dir()));
    // An explicit rollback to release 1, which the device keeps, is allowed and gated.
    let back = rig
        .deployer
        .rollback(one.manifest.clone(), Options::default())
        .await;
    committed(back, 1);
    assert_eq!(rig.current(), Some(one.dir()));
    // The floor stays at the highest committed release.
    assert_eq!(rig.state().committed, 2);
    // Release 2 again is not lower: it is unpacked afresh and goes live.
    committed(rig.install(&two).await, 2);
    // A rollback to a release the device does not keep is refused.
    let zero = Release::new(1, &[file("x", "y")]);
    let e = rig
        .deployer
        .rollback(zero.manifest, Options::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::NotKept(_)), "{e}");
}

#[tokio::test]
async fn a_kept_release_that_changed_on_disk_is_not_rolled_back_to() {
    let rig = Rig::new();
    let (one, two) = (Release::numbered(1), Release::numbered(2));
    committed(rig.install(&one).await, 1);
    committed(rig.install(&two).await, 2);
    let app = rig.layout.release(&one.dir()).join("bin/app");
    fs::write(&app, b"#!/bin/sh\necho tampered\n").unwrap();
    let e = rig
        .deployer
        .rollback(one.manifest.clone(), Options::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::Kept { .. }), "{e}");
    assert_eq!(rig.current(), Some(two.dir()));
}

#[tokio::test]
async fn the_last_three_releases_are_kept_and_the_previous_one_always() {
    let rig = Rig::new();
    let r: Vec<Release> = (1..=6).map(Release::numbered).collect();
    for x in &r[..5] {
        committed(rig.install(x).await, x.manifest.release);
    }
    assert_eq!(rig.releases(), [r[2].dir(), r[3].dir(), r[4].dir()]);
    committed(
        rig.deployer
            .rollback(r[2].manifest.clone(), Options::default())
            .await,
        3,
    );
    // Release 6 is switched to from release 3: 3 stays besides the newest three.
    committed(rig.install(&r[5]).await, 6);
    assert_eq!(
        rig.releases(),
        [r[2].dir(), r[3].dir(), r[4].dir(), r[5].dir()]
    );
}

#[tokio::test]
async fn failing_to_start_rolls_back_with_the_reason_and_the_journal() {
    let rig = Rig::new();
    let (one, two) = (Release::numbered(1), Release::numbered(2));
    committed(rig.install(&one).await, 1);
    rig.systemd.set(2, Behavior::FailsToStart);
    let Outcome::RolledBack {
        release,
        reason,
        journal_tail,
        restored,
    } = rig.install(&two).await.unwrap()
    else {
        panic!("not rolled back")
    };
    assert_eq!(release, 2);
    assert!(reason.starts_with("not active within 1s"), "{reason}");
    assert!(reason.contains("ActiveState=failed"), "{reason}");
    assert!(journal_tail.contains("FailsToStart"), "{journal_tail}");
    assert_eq!(restored, Some(one.dir()));
    assert_eq!(rig.current(), Some(one.dir()));
    assert_eq!(rig.releases(), [one.dir()]);
    let state = rig.state();
    assert_eq!(state.committed, 1);
    assert_eq!(state.failed, [two.dir()]);
    assert_eq!(rig.systemd.calls().len(), 3);

    // A failed release is not retried on its own…
    let e = rig.install(&two).await.unwrap_err();
    assert!(matches!(e, ApplyError::PreviouslyFailed(_)), "{e}");
    assert_eq!(rig.systemd.calls().len(), 3);
    // …only when a request says so.
    rig.systemd.set(2, Behavior::Starts);
    let retry = Options { retry_failed: true };
    committed(rig.install_with(&two, retry).await, 2);
}

#[tokio::test]
async fn a_crash_loop_during_the_soak_rolls_back() {
    let rig = Rig::new();
    let one = Release::numbered(1);
    committed(rig.install(&one).await, 1);
    let two = Release::numbered(2).with(|m| m.health.soak_s = 1);
    rig.systemd.set(2, Behavior::CrashLoops);
    let out = rig.install(&two).await.unwrap();
    let Outcome::RolledBack { reason, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("crash loop"), "{reason}");
    assert_eq!(rig.current(), Some(one.dir()));
}

#[tokio::test]
async fn when_the_previous_release_fails_too_it_is_unrecoverable() {
    let rig = Rig::new();
    committed(rig.install(&Release::numbered(1)).await, 1);
    // Something outside the releases broke: neither starts any more.
    rig.systemd.set(1, Behavior::FailsToStart);
    rig.systemd.set(2, Behavior::CrashLoops);
    let out = rig.install(&Release::numbered(2)).await.unwrap();
    let Outcome::FailedUnrecoverable {
        release, reason, ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(release, 2);
    assert!(reason.contains("crash loop"), "{reason}");
    assert!(
        reason.contains("the previous release failed too"),
        "{reason}"
    );
    assert!(rig.state().has_failed(&Release::numbered(2).dir()));
}

#[tokio::test]
async fn a_failed_first_install_leaves_no_current_and_stops_the_unit() {
    let rig = Rig::new();
    rig.systemd.set(1, Behavior::FailsToStart);
    let out = rig.install(&Release::numbered(1)).await.unwrap();
    assert!(
        matches!(out, Outcome::RolledBack { restored: None, .. }),
        "{out:?}"
    );
    assert_eq!(rig.current(), None);
    assert!(rig.releases().is_empty());
    assert_eq!(
        rig.systemd.calls(),
        ["restart web.service", "stop web.service"]
    );
    assert_eq!(rig.state().committed, 0);
}

/// A release whose `bin/hook` records where it ran and what `current` was.
fn hooked(n: u64, hooks: &[&str], hook_body: &str) -> Release {
    let mut items = standard_items(n);
    items.push(Item::File(
        "bin/hook",
        format!("#!/bin/sh\n{hook_body}\n").into_bytes(),
        0o755,
    ));
    Release::new(n, &items).with(|m| m.hooks = hooks.iter().map(|h| (*h).to_owned()).collect())
}

#[tokio::test]
async fn hooks_run_in_the_release_before_and_after_the_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let log_arg = log.display().to_string();
    let rig = Rig::with(|c| {
        c.pre_start = Some(vec!["bin/hook".into(), "pre".into(), log_arg.clone()]);
        c.post_switch = Some(vec!["bin/hook".into(), "post".into(), log_arg.clone()]);
    });
    let body = "echo \"$1 $(pwd) $(readlink ../../current || echo none)\" >> \"$2\"";
    let one = hooked(1, &["pre_start", "post_switch"], body);
    committed(rig.install(&one).await, 1);
    let dir = rig.layout.release(&one.dir());
    let dir = dir.canonicalize().unwrap().display().to_string();
    let link = format!("releases/{}", one.dir());
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("pre {dir} none\npost {dir} {link}\n")
    );
    // A release that asks for no hook runs none, even when the device declares them.
    committed(rig.install(&Release::numbered(2)).await, 2);
    assert_eq!(fs::read_to_string(&log).unwrap().lines().count(), 2);
}

#[tokio::test]
async fn a_failing_pre_start_hook_removes_the_release_and_changes_nothing_else() {
    let rig = Rig::with(|c| c.pre_start = Some(vec!["bin/hook".into()]));
    let one = Release::numbered(1);
    committed(rig.install(&one).await, 1);
    let two = hooked(2, &["pre_start"], "echo 'no database' >&2\nexit 4");
    let e = rig.install(&two).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "pre_start hook: pre_start failed: exit code 4; stderr: no database; the release was removed"
    );
    assert_eq!(rig.current(), Some(one.dir()));
    assert_eq!(rig.releases(), [one.dir()]);
    assert!(rig.state().has_failed(&two.dir()));
    assert_eq!(rig.systemd.calls().len(), 1);
}

#[tokio::test]
async fn a_failing_post_switch_hook_rolls_back() {
    let rig = Rig::with(|c| c.post_switch = Some(vec!["bin/hook".into()]));
    let one = Release::numbered(1);
    committed(rig.install(&one).await, 1);
    let out = rig
        .install(&hooked(2, &["post_switch"], "exit 1"))
        .await
        .unwrap();
    let Outcome::RolledBack { reason, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reason.starts_with("post_switch hook:"), "{reason}");
    assert_eq!(rig.current(), Some(one.dir()));
}

#[tokio::test]
async fn a_command_probe_runs_the_declared_program_in_the_release() {
    let rig = Rig::with(|c| c.probe = Some(vec!["bin/hook".into()]));
    let spec = |m: &mut Manifest| {
        m.health.probe = Some(Probe::Command);
        m.health.probe_passes = 2;
        m.health.probe_interval_s = 1;
    };
    let good = hooked(1, &[], "test -x bin/app").with(spec);
    committed(rig.install(&good).await, 1);
    let bad = hooked(2, &[], "exit 1").with(spec);
    let out = rig.install(&bad).await.unwrap();
    let Outcome::RolledBack { reason, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reason.starts_with("probe passed 0 of 2"), "{reason}");
    assert_eq!(rig.current(), Some(good.dir()));
}

#[tokio::test]
async fn an_interrupted_apply_blocks_new_ones_until_recovered() {
    let mut rig = Rig::new();
    committed(rig.install(&Release::numbered(1)).await, 1);
    rig.deployer.crash_at = Some(Step::Switched);
    let two = Release::numbered(2);
    assert!(matches!(
        rig.install(&two).await,
        Err(ApplyError::Crashed(Step::Switched))
    ));
    rig.restart_agent();
    let e = rig.install(&Release::numbered(3)).await.unwrap_err();
    assert!(matches!(e, ApplyError::Pending { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("pending (switched to {})", two.dir())),
        "{e}"
    );
    let rec = rig.deployer.recover().await;
    let Ok(Recovery::RolledBack(Outcome::RolledBack { reason, .. })) = &rec[0].result else {
        panic!("{rec:?}")
    };
    assert_eq!(reason, INTERRUPTED);
    committed(rig.install(&Release::numbered(3)).await, 3);
    // Release files are world-readable per their modes, so the unit's user can read them.
    let mode = fs::metadata(rig.layout.current_link().join("etc/app.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

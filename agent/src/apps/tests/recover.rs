//! Crashes at every step of an apply: the apply is stopped where a power loss or `kill -9`
//! could stop it (leaving the disk as it was at that instant), the agent "restarts", and
//! recovery must leave a consistent device: `current` on a complete release, no staging
//! directory, nothing pending in the journal, and new applies possible again.

use std::fs;

use super::*;
use crate::apps::journal::Phase;
use crate::apps::recover::INTERRUPTED;
use crate::apps::verify::verify_release;

/// A device with release 1 committed, then an install of release 2 stopped at `step`.
async fn crashed_at(step: Step, two: Behavior) -> (Rig, Release, Release) {
    let mut rig = Rig::new();
    let (one, two_r) = (Release::numbered(1), Release::numbered(2));
    let out = rig.install(&one).await.unwrap();
    assert!(matches!(out, Outcome::Committed { .. }), "{out:?}");
    rig.systemd.set(2, two);
    rig.deployer.crash_at = Some(step);
    let e = rig.install(&two_r).await.unwrap_err();
    assert!(matches!(e, ApplyError::Crashed(s) if s == step), "{e}");
    rig.restart_agent();
    (rig, one, two_r)
}

async fn recover(rig: &Rig) -> Recovery {
    let mut all = rig.deployer.recover().await;
    assert_eq!(all.len(), 1);
    let r = all.remove(0);
    assert_eq!(r.app, APP);
    r.result.unwrap()
}

/// The device is consistent and back on release 1, and release 2 can be installed again
/// (when it did not fail).
async fn back_on_one(rig: &Rig, one: &Release, two_failed: bool) {
    assert_eq!(rig.current(), Some(one.dir()));
    verify_release(&one.manifest, &rig.layout.current_link()).unwrap();
    assert_eq!(rig.releases(), [one.dir()]);
    assert!(!rig.layout.root().join("current.new").exists());
    let state = rig.state();
    assert_eq!(
        state.phase,
        Phase::Committed {
            current: Some(one.dir())
        }
    );
    assert_eq!(state.committed, 1);
    let two = Release::numbered(2);
    assert_eq!(state.has_failed(&two.dir()), two_failed);
    let again = rig.install(&two).await;
    if two_failed {
        assert!(
            matches!(again, Err(ApplyError::PreviouslyFailed(_))),
            "{again:?}"
        );
    } else {
        assert!(matches!(again, Ok(Outcome::Committed { .. })), "{again:?}");
    }
    // Recovering a consistent device again does nothing.
    assert_eq!(recover(rig).await, Recovery::Clean);
}

#[tokio::test]
async fn crash_while_unpacking() {
    let (rig, one, two) = crashed_at(Step::Unpacking, Behavior::Starts).await;
    // What a crash halfway through the unpack leaves: a partial staging directory.
    let staging = rig.layout.staging(&two.dir());
    fs::create_dir_all(staging.join("bin")).unwrap();
    fs::write(staging.join("bin/app"), b"#!/bin/sh\necho rel").unwrap();
    assert_eq!(
        recover(&rig).await,
        Recovery::DiscardedUnpack {
            release: 2,
            dir: two.dir()
        }
    );
    back_on_one(&rig, &one, false).await;
}

#[tokio::test]
async fn crash_after_unpacking_before_the_switch() {
    let (rig, one, two) = crashed_at(Step::Unpacked, Behavior::Starts).await;
    assert!(rig.layout.has_release(&two.dir()));
    assert_eq!(rig.current(), Some(one.dir()));
    assert!(matches!(
        recover(&rig).await,
        Recovery::DiscardedUnpack { release: 2, .. }
    ));
    back_on_one(&rig, &one, false).await;
}

#[tokio::test]
async fn crash_after_journaling_the_switch_before_making_it() {
    let (rig, one, _) = crashed_at(Step::Switching, Behavior::Starts).await;
    assert_eq!(rig.current(), Some(one.dir()));
    let Recovery::RolledBack(Outcome::RolledBack {
        release,
        reason,
        restored,
        ..
    }) = recover(&rig).await
    else {
        panic!("not rolled back")
    };
    assert_eq!((release, reason.as_str()), (2, INTERRUPTED));
    assert_eq!(restored, Some(one.dir()));
    back_on_one(&rig, &one, true).await;
}

#[tokio::test]
async fn crash_after_the_switch_before_the_gate_passed() {
    let (rig, one, two) = crashed_at(Step::Switched, Behavior::Starts).await;
    assert_eq!(rig.current(), Some(two.dir()));
    let calls = rig.systemd.calls().len();
    let Recovery::RolledBack(Outcome::RolledBack { reason, .. }) = recover(&rig).await else {
        panic!("not rolled back")
    };
    assert_eq!(reason, INTERRUPTED);
    // The previous release was restarted and checked.
    assert_eq!(rig.systemd.calls().len(), calls + 1);
    back_on_one(&rig, &one, true).await;
}

#[tokio::test]
async fn crash_in_the_middle_of_a_rollback() {
    let (rig, one, two) = crashed_at(Step::RollingBack, Behavior::FailsToStart).await;
    // The gate failed and the rollback was journaled, but `current` was not switched back.
    assert_eq!(rig.current(), Some(two.dir()));
    assert!(matches!(rig.state().phase, Phase::RollingBack { .. }));
    let Recovery::RolledBack(Outcome::RolledBack { reason, .. }) = recover(&rig).await else {
        panic!("not rolled back")
    };
    // The original reason is kept, not replaced by "interrupted".
    assert!(reason.starts_with("not active within"), "{reason}");
    back_on_one(&rig, &one, true).await;
}

#[tokio::test]
async fn leftovers_of_a_committed_apply_are_cleaned() {
    let rig = Rig::new();
    let one = Release::numbered(1);
    assert!(matches!(
        rig.install(&one).await,
        Ok(Outcome::Committed { .. })
    ));
    std::os::unix::fs::symlink("releases/x", rig.layout.root().join("current.new")).unwrap();
    fs::create_dir(rig.layout.staging("9-99999999")).unwrap();
    assert_eq!(recover(&rig).await, Recovery::Clean);
    assert_eq!(rig.releases(), [one.dir()]);
    assert!(!rig.layout.root().join("current.new").exists());
    assert_eq!(rig.current(), Some(one.dir()));
}

#[tokio::test]
async fn a_crash_during_a_first_install_leaves_no_current() {
    let mut rig = Rig::new();
    rig.deployer.crash_at = Some(Step::Switched);
    let one = Release::numbered(1);
    assert!(rig.install(&one).await.is_err());
    rig.restart_agent();
    let Recovery::RolledBack(Outcome::RolledBack { restored, .. }) = recover(&rig).await else {
        panic!("not rolled back")
    };
    assert_eq!(restored, None);
    assert_eq!(rig.current(), None);
    assert!(rig.releases().is_empty());
    assert_eq!(rig.systemd.calls().last().unwrap(), "stop web.service");
}

#[tokio::test]
async fn an_app_without_state_or_directory_recovers_clean() {
    let rig = Rig::new();
    assert_eq!(recover(&rig).await, Recovery::Clean);
    assert!(!rig.layout.root().exists());
}

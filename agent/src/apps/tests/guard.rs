//! The guard window's part in the deployer: an install that commits is journaled under
//! guard (a rollback is not), a guard rollback goes back to the previous release and marks
//! the failed one, and the apps report reads the directory layout.

use super::*;
use crate::apps::journal::Phase;

#[tokio::test]
async fn a_committed_install_is_guarded_and_a_guard_rollback_restores_the_previous() {
    let rig = Rig::new();
    let (one, two) = (Release::numbered(1), Release::numbered(2));
    rig.install(&one).await.unwrap();
    rig.install(&two).await.unwrap();
    let g = rig.deployer.guard(APP).expect("release 2 is under guard");
    assert_eq!((g.release, g.dir.as_str()), (2, two.dir().as_str()));
    assert_eq!(g.previous, Some(one.dir()));
    assert!(g.committed_at_ms > 0);
    // It passed its gate, then crash-loops: the watchdog asks for the rollback.
    rig.systemd.set(2, Behavior::CrashLoops);
    let out = rig
        .deployer
        .guard_roll_back(APP, &two.dir(), "crash loop".into())
        .await
        .unwrap();
    match out {
        Some(Outcome::RolledBack {
            release: 2,
            restored: Some(r),
            reason,
            ..
        }) => {
            assert_eq!(r, one.dir());
            assert_eq!(reason, "crash loop");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.current(), Some(one.dir()));
    let state = rig.state();
    assert!(state.has_failed(&two.dir()), "{state:?}");
    assert_eq!(state.guard, None);
    assert_eq!(
        state.phase,
        Phase::Committed {
            current: Some(one.dir())
        }
    );
    // Asked again (a second poll): nothing under guard any more.
    let again = rig
        .deployer
        .guard_roll_back(APP, &two.dir(), "crash loop".into())
        .await
        .unwrap();
    assert_eq!(again, None);
    // Release 2 is never installed again on its own.
    assert!(matches!(
        rig.install(&two).await,
        Err(ApplyError::PreviouslyFailed(_))
    ));
}

#[tokio::test]
async fn a_rollback_command_is_not_guarded_and_ends_the_window() {
    let rig = Rig::new();
    let (one, two) = (Release::numbered(1), Release::numbered(2));
    rig.install(&one).await.unwrap();
    rig.install(&two).await.unwrap();
    rig.deployer
        .rollback(one.manifest.clone(), Options::default())
        .await
        .unwrap();
    assert_eq!(rig.deployer.guard(APP), None);
    assert_eq!(rig.state().guard, None);
    // Nothing under guard: a guard rollback of release 2 does nothing.
    let out = rig
        .deployer
        .guard_roll_back(APP, &two.dir(), "late".into())
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(rig.current(), Some(one.dir()));
}

#[tokio::test]
async fn the_guard_survives_a_restart_and_a_failed_previous_is_unrecoverable() {
    let mut rig = Rig::new();
    let (one, two) = (Release::numbered(1), Release::numbered(2));
    rig.install(&one).await.unwrap();
    rig.install(&two).await.unwrap();
    rig.restart_agent();
    assert_eq!(rig.deployer.guard(APP).map(|g| g.release), Some(2));
    rig.systemd.set(1, Behavior::FailsToStart);
    let out = rig
        .deployer
        .guard_roll_back(APP, &two.dir(), "crash loop".into())
        .await
        .unwrap();
    assert!(
        matches!(out, Some(Outcome::FailedUnrecoverable { release: 2, .. })),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_apps_report_reads_current_and_kept_releases() {
    let rig = Rig::new();
    let empty = rig.deployer.app_states();
    assert_eq!(empty.len(), 1);
    assert_eq!((empty[0].app.as_str(), empty[0].unit.as_str()), (APP, UNIT));
    assert_eq!((empty[0].current, empty[0].kept.len()), (None, 0));
    for n in 1..=3 {
        rig.install(&Release::numbered(n)).await.unwrap();
    }
    let r = &rig.deployer.app_states()[0];
    let live = Release::numbered(3).dir();
    assert_eq!(r.current_dir.as_deref(), Some(live.as_str()));
    assert_eq!(r.current, Some(3));
    assert_eq!(r.kept, [1, 2, 3]);
}

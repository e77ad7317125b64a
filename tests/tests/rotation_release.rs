//! `rotate release-key` with a running controller and agent: the running controller tells
//! the device to trust the new key next to the old one (no restart), a release signed by
//! the new key and one signed by the old key both deploy during the overlap, and
//! `--finish` makes the device drop the old key. Each step is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use pifleet_controller::commands::deploy::{DeployOptions, deploy_to_device};
use pifleet_controller::datadir::DataDir;
use pifleet_controller::releases::{self, Input, IntakeOptions};
use pifleet_controller::setup;
use pifleet_controller::store::{ReleaseRow, Store};
use pifleet_shared::release::ReleaseSigner;
use pifleet_shared::signing::TrustedKey;
use pifleet_tests::harness::{Agent, Controller, fake_bin, wait_for};

const DEVICE: &str = "pi-relkey";
const WAIT: Duration = Duration::from_secs(60);

async fn release(
    dd: &DataDir,
    store: &Store,
    tmp: &Path,
    signer: &ReleaseSigner,
    text: &str,
) -> ReleaseRow {
    let path = tmp.join(format!("{}.tar.gz", text.len()));
    pifleet_tests::releasekit::write_site(&path, text, 0);
    let new = pifleet_tests::releasekit::quick_release("demo", format!("v{}", text.len()), vec![]);
    let input = Input::Upload {
        path,
        file_name: Some("site.tar.gz".into()),
    };
    releases::create_release(dd, store, signer, &IntakeOptions::default(), new, input)
        .await
        .unwrap()
}

async fn deploys(ctl: &Controller, agent: &Agent, store: &Store, row: &ReleaseRow) {
    let opts = DeployOptions::for_release(row, Duration::from_secs(60));
    let id = deploy_to_device(store, row, DEVICE, opts)
        .await
        .unwrap()
        .to_string();
    let (status, reason) = wait_for(WAIT, "the deploy to finish", || {
        let id = id.clone();
        async move {
            let db = ctl.db().await.ok()?;
            let r: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, reason FROM commands WHERE id = ?")
                    .bind(&id)
                    .fetch_optional(&db)
                    .await
                    .ok()
                    .flatten();
            db.close().await;
            r.filter(|(s, _)| ["succeeded", "failed", "rejected", "expired"].contains(&s.as_str()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), ctl.log()));
    assert_eq!(status, "succeeded", "{reason:?}\n{}", agent.log());
}

/// The release keys the device pins in the controller's file.
fn device_keys(agent: &Agent) -> Vec<TrustedKey> {
    TrustedKey::all_from_pem(
        &std::fs::read_to_string(agent.dir.join("release-keys.pem")).unwrap_or_default(),
    )
    .unwrap()
}

async fn wait_device_keys(ctl: &Controller, agent: &Agent, want: &[TrustedKey]) {
    wait_for(WAIT, "the device to trust the announced keys", || async {
        (device_keys(agent) == want).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}\n{}\n{}",
            device_keys(agent),
            agent.log(),
            ctl.log()
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_signed_by_the_new_key_deploys_and_the_old_key_is_dropped_at_the_end() {
    let ctl = Controller::start_with("[auth]\nkey_reload_s = 1\n")
        .await
        .unwrap();
    let mut agent = Agent::enroll(&ctl, DEVICE, 5).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_bin(&tmp.path().join("bin")).unwrap();
    fake.units_start().unwrap();
    agent
        .set_commands_toml(&pifleet_tests::releasekit::demo_app_toml(
            &fake,
            &tmp.path().join("apps/demo"),
        ))
        .unwrap();
    agent.start().unwrap();
    wait_for(WAIT, "agent online", || async {
        (ctl.online(DEVICE).await == Some(1)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let dd = DataDir::new(&ctl.data);
    let store = Store::open(&dd.database(), false).await.unwrap();
    let old_key = tmp.path().join("old-release.key");
    std::fs::copy(dd.release_key(), &old_key).unwrap();
    let old_signer = setup::load_release_signer(&old_key).unwrap();
    let old = setup::release_public_key(&dd).unwrap();
    assert_eq!(device_keys(&agent), std::slice::from_ref(&old));

    let out = ctl.cli(&["rotate", "release-key"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = setup::release_public_key(&dd).unwrap();
    assert_ne!(new, old);
    // The running controller tells the device; it trusts both during the overlap.
    wait_device_keys(&ctl, &agent, &[new.clone(), old.clone()]).await;

    let signer = setup::release_signer(&dd).unwrap();
    assert_eq!(signer.id(), new.id);
    let fresh = release(&dd, &store, tmp.path(), &signer, "signed by the new key").await;
    deploys(&ctl, &agent, &store, &fresh).await;
    let older = release(
        &dd,
        &store,
        tmp.path(),
        &old_signer,
        "signed by the old key, still trusted",
    )
    .await;
    deploys(&ctl, &agent, &store, &older).await;

    let out = ctl.cli(&["rotate", "release-key", "--finish"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_device_keys(&ctl, &agent, std::slice::from_ref(&new)).await;
    // Its receipt records that it trusts the new key alone.
    let db = ctl.db().await.unwrap();
    wait_for(WAIT, "the device to confirm the new key", || async {
        let acked: Vec<String> =
            sqlx::query_scalar("SELECT key_id FROM release_key_acks WHERE device_id = ?")
                .bind(DEVICE)
                .fetch_all(&db)
                .await
                .ok()?;
        (acked == [new.id.to_string()]).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action LIKE 'rotate.release_key%' \
         AND outcome = 'ok' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(audited, ["rotate.release_key", "rotate.release_key_finish"]);
    db.close().await;
    store.close().await;
}

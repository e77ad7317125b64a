//! Deploy commands made from a release: the command carries what the device must find in
//! what it downloads — the manifest's SHA-256, the archive's SHA-256 and size, the app and
//! the release number — all taken from the release's row, never from a request. Rollouts
//! create them through [`deploy_to_device`]; the API's generic `POST /api/v1/commands`
//! does not accept deploys.

use std::time::Duration;

use pifleet_shared::command::{Action, CommandId, MAX_TTL_MS};
use pifleet_shared::release::Digest;

use super::dispatch::{DispatchError, Targets, create_commands};
use rand::RngCore;

use crate::store::{NewCommand, ReleaseRow, Store, now_ms};

/// How a deploy command is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeployOptions {
    /// How long the command may wait for an offline device.
    pub ttl: Duration,
    /// How long after it was sent the device has to report a final result.
    pub answer_timeout: Duration,
    /// Install even if this release failed on the device before.
    pub retry_failed: bool,
}

impl DeployOptions {
    /// Defaults for `release`: a day to reach the device, and an answer timeout that leaves
    /// 15 minutes for the download, unpacking and hooks plus twice the health gate (the
    /// release's, then the previous release's after a rollback), at least `floor`.
    pub fn for_release(release: &ReleaseRow, floor: Duration) -> Self {
        let gate = u64::from(release.health.start_timeout_s) + u64::from(release.health.soak_s);
        Self {
            ttl: Duration::from_secs(86_400),
            answer_timeout: Duration::from_secs(900 + 2 * gate).max(floor),
            retry_failed: false,
        }
    }
}

/// The deploy action for `release`, from its stored digests.
pub fn deploy_action(release: &ReleaseRow, retry_failed: bool) -> Result<Action, DispatchError> {
    let digest = |hex: &str| -> Result<Digest, DispatchError> {
        crate::releases::storage::parse_digest(hex).ok_or_else(|| {
            DispatchError::Action(format!(
                "release {}: its stored digests are malformed",
                release.id
            ))
        })
    };
    let action = Action::Deploy {
        app: release.app.clone(),
        release: release.release,
        manifest_sha256: digest(&release.manifest_sha256)?,
        archive_sha256: digest(&release.archive_sha256)?,
        archive_size: release.archive_size,
        retry_failed,
    };
    action
        .validate()
        .map_err(|e| DispatchError::Action(e.to_string()))?;
    Ok(action)
}

/// The rollback action back to `release` (a release the device keeps).
pub fn rollback_action(release: &ReleaseRow) -> Result<Action, DispatchError> {
    let manifest_sha256 = crate::releases::storage::parse_digest(&release.manifest_sha256)
        .ok_or_else(|| {
            DispatchError::Action(format!(
                "release {}: its stored digests are malformed",
                release.id
            ))
        })?;
    Ok(Action::Rollback {
        app: release.app.clone(),
        release: release.release,
        manifest_sha256,
    })
}

/// A queued command for one device, made in the caller's transaction (a rollout's).
pub fn new_command(
    device: &str,
    action: Action,
    ttl: Duration,
    answer_timeout: Duration,
) -> NewCommand {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let ttl = ttl.min(Duration::from_millis(
        u64::try_from(MAX_TTL_MS).unwrap_or(u64::MAX),
    ));
    NewCommand {
        id: CommandId(id),
        device: device.to_owned(),
        action,
        expires_at: now_ms().saturating_add(ms(ttl)),
        answer_timeout_ms: ms(answer_timeout),
    }
}

/// Queues a deploy of `release` for one device (enrolled, not revoked); the dispatcher
/// signs and sends it when the device is online. Returns the command's id.
pub async fn deploy_to_device(
    store: &Store,
    release: &ReleaseRow,
    device: &str,
    opts: DeployOptions,
) -> Result<CommandId, DispatchError> {
    let max_ttl = Duration::from_millis(u64::try_from(MAX_TTL_MS).unwrap_or(u64::MAX));
    let action = deploy_action(release, opts.retry_failed)?;
    let created = create_commands(
        store,
        &Targets::Devices(vec![device.to_owned()]),
        action,
        opts.ttl.min(max_ttl),
        opts.answer_timeout,
    )
    .await?;
    created
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .ok_or_else(|| DispatchError::NoTarget(format!("no device {device}")))
}

#[cfg(test)]
mod tests {
    use pifleet_shared::release::HealthSpec;

    use super::*;
    use crate::store::ReleaseSource;

    fn row() -> ReleaseRow {
        ReleaseRow {
            id: 4,
            app: "web".into(),
            release: 7,
            version: "1.0".into(),
            archive_sha256: "ab".repeat(32),
            archive_size: 1234,
            unpacked_size: 5000,
            entries: 3,
            arches: vec![],
            health: HealthSpec {
                start_timeout_s: 30,
                soak_s: 20,
                ..HealthSpec::default()
            },
            hooks: vec![],
            key_id: "00".repeat(8),
            manifest_sha256: "cd".repeat(32),
            source: ReleaseSource::Upload { file_name: None },
            created_at: 1,
            created_by: "test".into(),
        }
    }

    #[test]
    fn the_action_comes_from_the_row() {
        let a = deploy_action(&row(), true).unwrap();
        assert_eq!(
            a,
            Action::Deploy {
                app: "web".into(),
                release: 7,
                manifest_sha256: [0xcd; 32],
                archive_sha256: [0xab; 32],
                archive_size: 1234,
                retry_failed: true,
            }
        );
        let broken = ReleaseRow {
            manifest_sha256: "not hex".into(),
            ..row()
        };
        assert!(matches!(
            deploy_action(&broken, false),
            Err(DispatchError::Action(_))
        ));
        let opts = DeployOptions::for_release(&row(), Duration::from_secs(60));
        assert_eq!(opts.answer_timeout, Duration::from_secs(900 + 100));
        let opts = DeployOptions::for_release(&row(), Duration::from_secs(5_000));
        assert_eq!(opts.answer_timeout, Duration::from_secs(5_000));
    }
}

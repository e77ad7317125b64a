//! What a device may download, and from where.
//!
//! The rule: a device downloads a release's signed manifest only while it has a deploy or
//! rollback command naming that manifest which is on its way or running there (sent,
//! accepted or running), and the archive only for such a deploy command. So a device
//! certificate does not open every release, only the one the controller told that device
//! to install; queued, finished, expired or cancelled commands open nothing. Devices name a
//! release by its manifest's SHA-256, which the signed command carries.

use pifleet_shared::command::Action;
use pifleet_shared::release::Digest;
use pifleet_shared::token::to_hex;

use crate::store::{ReleaseRow, Store, StoreError};

/// What a device asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The signed manifest: for a deploy or a rollback.
    Manifest,
    /// The archive: for a deploy only (a rollback uses the copy the device kept).
    Archive,
}

/// Why a download is refused.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(
        "this device has no deploy or rollback command in progress for this release; \
         downloads are opened by the command, not by the certificate alone"
    )]
    NotOrdered,
    #[error("no release has this manifest (none was made, or it was deleted)")]
    Gone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `action` (one of the device's commands in progress) opens `want` of the release
/// whose manifest is `manifest_sha256`. Pure; table-tested below.
pub fn opens(action: &Action, manifest_sha256: &Digest, want: Want) -> bool {
    match action {
        Action::Deploy {
            manifest_sha256: m, ..
        } => m == manifest_sha256,
        Action::Rollback {
            manifest_sha256: m, ..
        } => want == Want::Manifest && m == manifest_sha256,
        _ => false,
    }
}

/// The release `device` may download `want` of, by its manifest's SHA-256.
pub async fn release_for_device(
    store: &Store,
    device: &str,
    manifest_sha256: &Digest,
    want: Want,
) -> Result<ReleaseRow, DeliveryError> {
    let actions = store.release_actions_in_flight(device).await?;
    if !actions.iter().any(|a| opens(a, manifest_sha256, want)) {
        return Err(DeliveryError::NotOrdered);
    }
    store
        .release_by_manifest(&to_hex(manifest_sha256))
        .await?
        .ok_or(DeliveryError::Gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_commands_open_which_downloads() {
        let m = [7u8; 32];
        let other = [8u8; 32];
        let deploy = |manifest_sha256| Action::Deploy {
            app: "web".into(),
            release: 2,
            manifest_sha256,
            archive_sha256: [1; 32],
            archive_size: 10,
            retry_failed: false,
        };
        let rollback = |manifest_sha256| Action::Rollback {
            app: "web".into(),
            release: 1,
            manifest_sha256,
        };
        let table = [
            (deploy(m), Want::Manifest, true),
            (deploy(m), Want::Archive, true),
            (deploy(other), Want::Manifest, false),
            (deploy(other), Want::Archive, false),
            (rollback(m), Want::Manifest, true),
            (rollback(m), Want::Archive, false),
            (rollback(other), Want::Manifest, false),
            (Action::Ping, Want::Manifest, false),
            (
                Action::TrustReleaseKeys { keys: vec![m] },
                Want::Manifest,
                false,
            ),
        ];
        for (action, want, expect) in table {
            assert_eq!(opens(&action, &m, want), expect, "{action:?} {want:?}");
        }
    }
}

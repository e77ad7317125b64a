//! Telling devices which release keys to trust.
//!
//! Devices verify release manifests against pinned release keys. A device enrolled since
//! releases exist gets them in its enrollment answer; one enrolled before must learn them
//! without enrolling again. So once after start-up the controller announces its release
//! keys — a `TrustReleaseKeys` command, signed by the command key every device already
//! pins — to each enrolled device that has not confirmed all of them, unless one is on its
//! way. A device confirms with a successful receipt, recorded in `release_key_acks`;
//! commands wait for offline devices until they expire (7 days), and the next start
//! announces again to whoever is still missing.
//!
//! This makes the command key able to name release keys: whoever holds `command.key` can
//! make devices trust a release key of their own (see the threat model).

use std::time::Duration;

use pifleet_shared::command::{Action, MAX_TTL_MS};
use pifleet_shared::signing::TrustedKey;
use tokio_util::sync::CancellationToken;

use super::dispatch::{DispatchError, Dispatcher, Targets};
use crate::store::{CommandRow, Store, StoreError};
use crate::supervise::{Fatal, TaskResult};

/// Devices per batch of announcements (one write transaction each).
const BATCH: usize = 1_000;
/// Wait before trying again after the database failed.
const RETRY: Duration = Duration::from_secs(60);

/// The key ids of `keys`, as the database records them.
fn key_ids(keys: &[TrustedKey]) -> Vec<String> {
    keys.iter().map(|k| k.id.to_string()).collect()
}

/// Creates one announcement of `keys` per device that needs it; returns how many.
pub async fn announce(
    dispatcher: &Dispatcher,
    keys: &[TrustedKey],
) -> Result<usize, DispatchError> {
    let store = dispatcher.store();
    let devices = store.devices_to_announce(&key_ids(keys)).await?;
    let action = Action::TrustReleaseKeys {
        keys: keys.iter().map(|k| k.key.to_bytes()).collect(),
    };
    let ttl = Duration::from_millis(u64::try_from(MAX_TTL_MS).unwrap_or(u64::MAX));
    let mut created = 0;
    for chunk in devices.chunks(BATCH) {
        created += dispatcher
            .submit(&Targets::Devices(chunk.to_vec()), action.clone(), ttl)
            .await?
            .len();
    }
    Ok(created)
}

/// The task `serve` runs: announces once (trying again while the database fails for a
/// while), then waits for shutdown.
pub async fn announce_once(
    dispatcher: std::sync::Arc<Dispatcher>,
    keys: Vec<TrustedKey>,
    shutdown: CancellationToken,
) -> TaskResult {
    loop {
        match announce(&dispatcher, &keys).await {
            Ok(0) => {
                tracing::info!(keys = ?key_ids(&keys), "every device trusts the release keys already");
                break;
            }
            Ok(n) => {
                tracing::info!(devices = n, keys = ?key_ids(&keys), "release keys announced");
                break;
            }
            Err(DispatchError::Store(e)) if e.is_fatal() => {
                return Err(Fatal::new("the database is broken", e));
            }
            Err(e) => tracing::warn!(error = %e, "cannot announce the release keys yet"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
    shutdown.cancelled().await;
    Ok(())
}

/// Records the keys a device confirmed when its announcement succeeded.
pub async fn confirmed(store: &Store, command: &CommandRow) -> Result<(), StoreError> {
    if command.action_kind != "trust_release_keys" {
        return Ok(());
    }
    let Action::TrustReleaseKeys { keys } = command.parsed_action()? else {
        return Ok(());
    };
    let ids: Vec<String> = keys
        .iter()
        .filter_map(|k| TrustedKey::from_raw(k).ok())
        .map(|k| k.id.to_string())
        .collect();
    store
        .ack_release_keys(&command.device_id, &ids, &command.id)
        .await
}

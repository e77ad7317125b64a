//! Telling devices which command keys to trust after a rotation.
//!
//! Each key of the history (`command_keys`) after the first is signed by the key before
//! it. A device is sent the chain (`TrustCommandKeys`), signed by its newest key: it
//! follows the links from the newest key it trusts, so one announcement brings a device
//! that was offline through several rotations up to date, even after the keys it trusted
//! stopped signing. A successful receipt records which keys it now trusts
//! (`command_key_acks`), and the dispatcher signs its commands with the newest of them.
//! Devices are asked at every key reload until they confirm; an announcement that expired
//! is made again, one that was refused is not (the rotation status lists the device).

use std::time::Duration;

use pifleet_shared::command::{Action, MAX_KEY_LINKS, MAX_TTL_MS};
use pifleet_shared::signing::TrustedKey;

use super::dispatch::{DispatchError, Dispatcher, Targets};
use crate::store::{CommandKeyRow, CommandRow, Store, StoreError, now_ms};

/// Devices per batch of announcements (one write transaction each).
const BATCH: usize = 1_000;

/// The announcement of `history` at `now`: the chain from the first key (or the oldest
/// that fits), and how many of its newest keys still sign. `None` without a rotation.
pub fn chain_action(history: &[CommandKeyRow], now: i64) -> Option<Action> {
    let start = history.len().saturating_sub(MAX_KEY_LINKS + 1);
    let chain = &history[start..];
    if chain.len() < 2 {
        return None;
    }
    let keys = chain
        .iter()
        .map(|k| <[u8; 32]>::try_from(k.public_key.as_slice()).ok())
        .collect::<Option<Vec<_>>>()?;
    let mut signatures = Vec::with_capacity(64 * (chain.len() - 1));
    for k in &chain[1..] {
        signatures.extend_from_slice(k.signature.as_deref().filter(|s| s.len() == 64)?);
    }
    let signing = chain[..chain.len() - 1]
        .iter()
        .filter(|k| k.retire_at.is_some_and(|t| t > now))
        .count();
    Some(Action::TrustCommandKeys {
        keys,
        signatures,
        keep: u8::try_from(signing + 1).unwrap_or(u8::MAX),
    })
}

/// Creates an announcement for every device that has not confirmed the newest key;
/// returns how many.
pub async fn announce(
    dispatcher: &Dispatcher,
    history: &[CommandKeyRow],
) -> Result<usize, DispatchError> {
    let Some(newest) = history.last() else {
        return Ok(0);
    };
    let Some(action) = chain_action(history, now_ms()) else {
        return Ok(0);
    };
    let store = dispatcher.store();
    let devices = store
        .devices_to_announce_command_key(&newest.key_id, newest.announce_from)
        .await?;
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

/// Records the keys a device trusts once its announcement succeeded.
pub async fn confirmed(store: &Store, command: &CommandRow) -> Result<(), StoreError> {
    if command.action_kind != "trust_command_keys" {
        return Ok(());
    }
    let Action::TrustCommandKeys { keys, keep, .. } = command.parsed_action()? else {
        return Ok(());
    };
    let kept = &keys[keys.len().saturating_sub(usize::from(keep))..];
    let ids: Vec<String> = kept
        .iter()
        .filter_map(|k| TrustedKey::from_raw(k).ok())
        .map(|k| k.id.to_string())
        .collect();
    store
        .ack_command_keys(&command.device_id, &ids, Some(&command.id))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: u8, retire_at: Option<i64>) -> CommandKeyRow {
        CommandKeyRow {
            key_id: format!("k{seed}"),
            public_key: vec![seed; 32],
            signed_by: None,
            signature: (seed > 0).then(|| vec![seed; 64]),
            created_at: i64::from(seed),
            retire_at,
            announce_from: 0,
        }
    }

    #[test]
    fn the_chain_names_every_rotation_and_the_keys_still_signing() {
        assert_eq!(chain_action(&[], 0), None);
        assert_eq!(chain_action(&[row(0, None)], 0), None);
        let history = [row(0, Some(100)), row(1, Some(200)), row(2, None)];
        let Some(Action::TrustCommandKeys {
            keys,
            signatures,
            keep,
        }) = chain_action(&history, 150)
        else {
            panic!("no chain");
        };
        assert_eq!(keys, [[0; 32], [1; 32], [2; 32]]);
        assert_eq!(signatures[..64], [1; 64]);
        assert_eq!(signatures[64..], [2; 64]);
        assert_eq!(keep, 2, "k1 still signs, k0 no longer");
        let Some(Action::TrustCommandKeys { keep, .. }) = chain_action(&history, 300) else {
            panic!("no chain");
        };
        assert_eq!(keep, 1);
        // A link without its signature cannot be announced.
        let mut broken = history.clone();
        broken[1].signature = None;
        assert_eq!(chain_action(&broken, 0), None);
    }
}

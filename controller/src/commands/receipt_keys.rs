//! The device keys receipts are verified with: every unrevoked, unexpired certificate of
//! the device counts, because a device that just renewed its certificate may still sign a
//! receipt with its previous key (and one that renewed since the cache was filled signs
//! with a key the cache does not know yet, so a miss reloads from the database once).

use std::collections::HashMap;
use std::sync::Mutex;

use pifleet_shared::DeviceId;
use pifleet_shared::command::{Receipt, SignedReceipt};
use pifleet_shared::signing::{DeviceKeyAlg, ReceiptError, verify_receipt};

use crate::store::{Store, StoreError, now_ms};

/// One key: algorithm, public key, notAfter of its certificate (Unix ms).
type Key = (DeviceKeyAlg, Vec<u8>, i64);

/// What checking a receipt's signature found.
#[derive(Debug)]
pub enum Verified {
    Ok(Receipt),
    /// The device has no usable key (never enrolled, or every certificate expired).
    NoKey,
    /// No key of the device verifies it.
    Bad(ReceiptError),
}

/// A per-device cache of receipt keys in front of the `certificates` table.
#[derive(Debug)]
pub struct ReceiptKeys {
    store: Store,
    cache: Mutex<HashMap<String, Vec<Key>>>,
}

impl ReceiptKeys {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `signed` against the device's cached keys, then, if none verifies, against
    /// its keys freshly read from the database.
    pub async fn verify(
        &self,
        device: &DeviceId,
        signed: &SignedReceipt,
    ) -> Result<Verified, StoreError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device.as_str())
            .cloned();
        if let Some(keys) = cached
            && let Verified::Ok(r) = try_keys(&keys, signed)
        {
            return Ok(Verified::Ok(r));
        }
        let keys: Vec<Key> = self
            .store
            .device_keys(device.as_str())
            .await?
            .into_iter()
            .filter_map(|(alg, key, not_after)| {
                DeviceKeyAlg::parse(&alg).map(|alg| (alg, key, not_after))
            })
            .collect();
        let verdict = try_keys(&keys, signed);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device.to_string(), keys);
        Ok(verdict)
    }
}

/// The first unexpired key that verifies, or why none did.
fn try_keys(keys: &[Key], signed: &SignedReceipt) -> Verified {
    let now = now_ms();
    let mut verdict = Verified::NoKey;
    for (alg, key, not_after) in keys {
        if *not_after <= now {
            continue;
        }
        match verify_receipt(signed, *alg, key) {
            Ok(r) => return Verified::Ok(r),
            Err(e) => verdict = Verified::Bad(e),
        }
    }
    verdict
}

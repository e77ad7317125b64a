//! `rotate command-key`: a new command-signing key, announced to devices by a chain of
//! signatures. The history lives in `command_keys` (each key signed by the one before);
//! the newest private key is `command.key`, the keys it superseded stay in
//! `command-previous.key` for the overlap, during which they still sign commands for
//! devices that have not confirmed the new key. `--finish` (or the end of the overlap)
//! stops them; devices are then told to trust the newest key only.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use pifleet_shared::signing::{CommandSigner, TrustedKey};
use rand::RngCore;

use crate::commands::signers::Signers;
use crate::datadir::{DataDir, DataDirError, write_private};
use crate::store::{CommandKeyRow, Store, StoreError, now_ms};

/// Why the command keys could not be rotated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CommandKeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] DataDirError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error(
        "command.key is key {file} but the history's newest is {history}: a rotation was cut \
         short, or the key files are older than the database (restored from before a \
         rotation); restore command.key and command.pub from command-previous.key or from a \
         key backup no older than the database"
    )]
    NotNewest { file: String, history: String },
    #[error("no rotation to finish: no previous command key signs any more")]
    NothingToFinish,
}

/// A rotation done.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub new: String,
    pub previous: String,
    /// When the previous key stops signing (Unix ms).
    pub retire_at: i64,
}

fn read(path: &std::path::Path) -> Result<String, CommandKeyError> {
    std::fs::read_to_string(path).map_err(|source| CommandKeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn signer(pem: &str, what: &str) -> Result<CommandSigner, CommandKeyError> {
    CommandSigner::from_pkcs8_pem(pem).map_err(|e| CommandKeyError::Key(format!("{what}: {e}")))
}

/// The key in `command.key`, and the history, started with it if it had not begun.
pub async fn history(
    dd: &DataDir,
    store: &Store,
) -> Result<(CommandSigner, Vec<CommandKeyRow>), CommandKeyError> {
    let current = signer(&read(&dd.command_key())?, "command.key")?;
    let mut history = store.command_keys().await?;
    if history.is_empty() {
        // Only then a write: the running controller reads this at every key reload.
        store
            .ensure_first_command_key(
                &current.id().to_string(),
                current.verifying_key().as_bytes(),
            )
            .await?;
        history = store.command_keys().await?;
    }
    let newest = history.last().map(|k| k.key_id.clone()).unwrap_or_default();
    if newest != current.id().to_string() {
        return Err(CommandKeyError::NotNewest {
            file: current.id().to_string(),
            history: newest,
        });
    }
    Ok((current, history))
}

/// Makes a new command key; the current one keeps signing for `overlap_ms` for devices
/// that have not confirmed the new one.
pub async fn rotate(
    dd: &DataDir,
    store: &Store,
    overlap_ms: i64,
) -> Result<Rotated, CommandKeyError> {
    let (current, _) = history(dd, store).await?;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| CommandKeyError::Key(e.to_string()))?;
    let pub_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| CommandKeyError::Key(e.to_string()))?;
    let new = signer(&key_pem, "new key")?;
    let link = current.sign_link(&new.verifying_key());

    // The current key is kept for the overlap before anything else changes.
    let previous_path = dd.command_previous_key();
    let mut previous = if previous_path.exists() {
        read(&previous_path)?
    } else {
        String::new()
    };
    previous.push_str(&read(&dd.command_key())?);
    write_private(&previous_path, previous.as_bytes())?;

    let now = now_ms();
    let retire_at = now.saturating_add(overlap_ms);
    store
        .add_command_key(
            &CommandKeyRow {
                key_id: new.id().to_string(),
                public_key: new.verifying_key().as_bytes().to_vec(),
                signed_by: Some(current.id().to_string()),
                signature: Some(link),
                created_at: now,
                retire_at: None,
                announce_from: now,
            },
            retire_at,
        )
        .await?;
    write_private(&dd.command_pub(), pub_pem.as_bytes())?;
    write_private(&dd.command_key(), key_pem.as_bytes())?;
    Ok(Rotated {
        new: new.id().to_string(),
        previous: current.id().to_string(),
        retire_at,
    })
}

/// Ends the overlap now; returns the ids of the keys that stopped signing.
pub async fn finish(dd: &DataDir, store: &Store) -> Result<Vec<String>, CommandKeyError> {
    let (current, history) = history(dd, store).await?;
    let now = now_ms();
    let stopping: Vec<String> = history
        .iter()
        .filter(|k| k.retire_at.is_some_and(|t| t > now))
        .map(|k| k.key_id.clone())
        .collect();
    let previous = dd.command_previous_key();
    if stopping.is_empty() && !previous.exists() {
        return Err(CommandKeyError::NothingToFinish);
    }
    store.finish_command_keys(&current.id().to_string()).await?;
    if previous.exists() {
        std::fs::remove_file(&previous).map_err(|source| CommandKeyError::Read {
            path: previous.display().to_string(),
            source,
        })?;
    }
    Ok(stopping)
}

/// The keys the dispatcher signs with: `command.key`, and the superseded keys of
/// `command-previous.key` whose overlap has not ended.
pub async fn load_signers(dd: &DataDir, store: &Store) -> Result<Signers, CommandKeyError> {
    let (newest, history) = history(dd, store).await?;
    let first = history
        .first()
        .and_then(|k| <[u8; 32]>::try_from(k.public_key.as_slice()).ok())
        .and_then(|raw| TrustedKey::from_raw(&raw).ok())
        .map_or(newest.id(), |k| k.id);
    let mut previous = Vec::new();
    let path = dd.command_previous_key();
    if path.exists() {
        const END: &str = "-----END PRIVATE KEY-----";
        let text = read(&path)?;
        let now = now_ms();
        for block in text.split_inclusive(END).filter(|b| b.contains(END)) {
            let s = signer(block, "command-previous.key")?;
            let id = s.id().to_string();
            if let Some(row) = history.iter().find(|k| k.key_id == id)
                && let Some(until) = row.retire_at.filter(|t| *t > now)
            {
                previous.push((row.created_at, s, until));
            }
        }
    }
    previous.sort_by_key(|(created, _, _)| std::cmp::Reverse(*created));
    Ok(Signers {
        newest,
        previous: previous.into_iter().map(|(_, s, t)| (s, t)).collect(),
        first,
    })
}

/// Per key of the history (newest first): its row, and for the newest the devices that
/// have not confirmed it.
pub async fn status(
    dd: &DataDir,
    store: &Store,
) -> Result<(Vec<CommandKeyRow>, Vec<String>), CommandKeyError> {
    let (_, mut history) = history(dd, store).await?;
    let pending = match history.last() {
        Some(newest) if history.len() > 1 => {
            store
                .devices_without_command_key(&newest.key_id, newest.announce_from)
                .await?
        }
        _ => Vec::new(),
    };
    history.reverse();
    Ok((history, pending))
}

#[cfg(test)]
mod tests {
    use pifleet_shared::signing::verify_chain;

    use super::*;
    use crate::commands::command_keys::chain_action;

    #[tokio::test]
    async fn rotations_chain_and_finishing_stops_the_old_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        crate::setup::init(&root, &["localhost".into()], None)
            .await
            .unwrap();
        let dd = DataDir::new(&root);
        let store = Store::open(&dd.database(), false).await.unwrap();
        let k0 = load_signers(&dd, &store).await.unwrap();
        assert_eq!(k0.ids().len(), 1);
        let pinned = TrustedKey::from_pem(&read(&dd.command_pub()).unwrap()).unwrap();
        assert_eq!(pinned.id, k0.newest.id());
        assert!(matches!(
            finish(&dd, &store).await,
            Err(CommandKeyError::NothingToFinish)
        ));

        let one = rotate(&dd, &store, 60_000).await.unwrap();
        let two = rotate(&dd, &store, 60_000).await.unwrap();
        assert_eq!(one.new, two.previous);
        let signers = load_signers(&dd, &store).await.unwrap();
        assert_eq!(signers.newest.id().to_string(), two.new);
        assert_eq!(signers.ids().len(), 3);
        assert_eq!(signers.first, k0.newest.id());
        // command.pub follows command.key.
        let pinned_now = TrustedKey::from_pem(&read(&dd.command_pub()).unwrap()).unwrap();
        assert_eq!(pinned_now.id.to_string(), two.new);

        // A device pinning the first key follows the whole chain to the newest.
        let history = store.command_keys().await.unwrap();
        let Some(pifleet_shared::command::Action::TrustCommandKeys {
            keys,
            signatures,
            keep,
        }) = chain_action(&history, now_ms())
        else {
            panic!("no chain");
        };
        assert_eq!(keep, 3);
        let chain = verify_chain(&keys, &signatures, &[pinned]).unwrap();
        assert_eq!(chain.last().unwrap().id.to_string(), two.new);

        let stopped = finish(&dd, &store).await.unwrap();
        assert_eq!(stopped.len(), 2);
        assert!(!dd.command_previous_key().exists());
        assert_eq!(load_signers(&dd, &store).await.unwrap().ids().len(), 1);
        let (keys, pending) = status(&dd, &store).await.unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].key_id, two.new);
        assert!(pending.is_empty(), "no device enrolled");

        // A cut-short rotation (history ahead of command.key) is reported, not papered over.
        std::fs::write(
            dd.command_key(),
            read(&tmp.path().join("d/command.key")).unwrap(),
        )
        .unwrap();
        store
            .add_command_key(
                &CommandKeyRow {
                    key_id: "ffffffffffffffff".into(),
                    public_key: vec![1; 32],
                    signed_by: Some(two.new.clone()),
                    signature: Some(vec![0; 64]),
                    created_at: now_ms() + 1,
                    retire_at: None,
                    announce_from: 0,
                },
                0,
            )
            .await
            .unwrap();
        assert!(matches!(
            load_signers(&dd, &store).await,
            Err(CommandKeyError::NotNewest { .. })
        ));
    }
}

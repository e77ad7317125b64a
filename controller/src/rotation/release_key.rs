//! `rotate release-key`: a new release-signing key in `release.key`/`release.pub`; the
//! previous public key moves to `release-previous.pub`, so devices are told to trust both
//! (releases signed by either verify) until `--finish` drops the previous ones. New
//! releases are signed with the new key at once (the key file is read for each release).

use pifleet_shared::command::MAX_RELEASE_KEYS;
use pifleet_shared::signing::TrustedKey;

use crate::datadir::{DataDir, DataDirError, write_private};
use crate::setup::{self, SetupError};

/// Why a release key rotation changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseKeyError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Write(#[from] DataDirError),
    #[error(
        "{} is not in the data dir (kept offline?): make the new key where the old one is kept",
        .0.display()
    )]
    Offline(std::path::PathBuf),
    #[error(
        "devices trust at most {MAX_RELEASE_KEYS} release keys: finish the previous rotation first (rotate release-key --finish)"
    )]
    TooMany,
    #[error("no rotation to finish: only one release key is in use")]
    NothingToFinish,
}

/// Makes a new release key; returns the new key and every key now trusted.
pub fn rotate(dd: &DataDir) -> Result<(TrustedKey, Vec<TrustedKey>), ReleaseKeyError> {
    if !dd.release_key().exists() {
        return Err(ReleaseKeyError::Offline(dd.release_key()));
    }
    let before = setup::release_public_keys(dd)?;
    if before.len() >= MAX_RELEASE_KEYS {
        return Err(ReleaseKeyError::TooMany);
    }
    // The old public key is kept first: a crash before the new pair is written leaves
    // the same key trusted twice, never a key lost.
    let previous: String = before.iter().map(TrustedKey::to_pem).collect();
    write_private(&dd.release_previous_pub(), previous.as_bytes())?;
    setup::write_key_pair(&dd.release_key(), &dd.release_pub(), SetupError::ReleaseKey)?;
    let now = setup::release_public_keys(dd)?;
    let new = setup::release_public_key(dd)?;
    Ok((new, now))
}

/// Ends the overlap: only `release.pub` stays trusted. Returns the keys dropped.
pub fn finish(dd: &DataDir) -> Result<Vec<TrustedKey>, ReleaseKeyError> {
    let keys = setup::release_public_keys(dd)?;
    if keys.len() < 2 {
        return Err(ReleaseKeyError::NothingToFinish);
    }
    let path = dd.release_previous_pub();
    std::fs::remove_file(&path).map_err(|source| {
        ReleaseKeyError::Setup(SetupError::Io {
            path: path.display().to_string(),
            source,
        })
    })?;
    Ok(keys[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotating_keeps_the_previous_key_until_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        setup::init(&root, &["localhost".into()], None)
            .await
            .unwrap();
        let dd = DataDir::new(&root);
        let first = setup::release_public_key(&dd).unwrap();
        assert!(matches!(finish(&dd), Err(ReleaseKeyError::NothingToFinish)));

        let (second, trusted) = rotate(&dd).unwrap();
        assert_ne!(second, first);
        assert_eq!(trusted, [second.clone(), first.clone()]);
        // The new private key signs.
        let signer = setup::release_signer(&dd).unwrap();
        assert_eq!(signer.id(), second.id);
        let (third, trusted) = rotate(&dd).unwrap();
        assert_eq!(trusted, [third.clone(), second.clone(), first.clone()]);

        assert_eq!(finish(&dd).unwrap(), [second, first]);
        assert_eq!(setup::release_public_keys(&dd).unwrap(), [third]);

        // A key kept offline is not rotated here.
        std::fs::remove_file(dd.release_key()).unwrap();
        assert!(matches!(rotate(&dd), Err(ReleaseKeyError::Offline(_))));
    }
}

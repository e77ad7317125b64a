//! The release keys this device trusts (`tls.release_keys`): every "PUBLIC KEY" block of
//! every listed PEM file. The first file is the controller's: `enroll` writes it and a
//! signed `TrustReleaseKeys` command replaces it ([`ReleaseKeys::replace`]: a temp file,
//! fsync, rename, directory fsync, so a power loss leaves the old set or the new one).
//! The others are the administrator's and never written.

use std::path::PathBuf;
use std::sync::RwLock;

use pifleet_shared::signing::{KeyError, TrustedKey};

/// Why the keys could not be read or replaced.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("tls.release_keys lists no file: release keys cannot be trusted here")]
    NoFile,
    #[error("announced key: {0}")]
    Announced(#[source] KeyError),
    #[error(transparent)]
    Write(#[from] pifleet_io::FileError),
}

/// The trusted release keys and where they come from.
#[derive(Debug)]
pub struct ReleaseKeys {
    files: Vec<PathBuf>,
    keys: RwLock<Vec<TrustedKey>>,
}

impl ReleaseKeys {
    /// Reads every listed file; the first may be missing (no keys announced yet).
    pub fn load(files: &[PathBuf]) -> Result<Self, KeysError> {
        let mut keys = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if i == 0 && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(KeysError::Read {
                        path: path.clone(),
                        source,
                    });
                }
            };
            match TrustedKey::all_from_pem(&text) {
                Ok(found) => add(&mut keys, found),
                // The controller's file: trust none of it, and let the next announcement
                // (which replaces it) repair it rather than keep the agent from starting.
                Err(e) if i == 0 => {
                    tracing::error!(path = %path.display(), error = %e, "damaged release key file ignored until the controller announces its keys again");
                }
                Err(source) => {
                    return Err(KeysError::Key {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(Self {
            files: files.to_vec(),
            keys: RwLock::new(keys),
        })
    }

    /// The keys trusted now.
    pub fn current(&self) -> Vec<TrustedKey> {
        // A poisoned lock still holds a whole vector (it is only ever replaced).
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes `announced` the controller's keys: writes them to the first file durably, then
    /// trusts them together with the administrator's. Blocking file I/O.
    pub fn replace(&self, announced: &[[u8; 32]]) -> Result<Vec<TrustedKey>, KeysError> {
        let first = self.files.first().ok_or(KeysError::NoFile)?;
        let mut keys = Vec::with_capacity(announced.len());
        for raw in announced {
            keys.push(TrustedKey::from_raw(raw).map_err(KeysError::Announced)?);
        }
        let pem: String = keys.iter().map(TrustedKey::to_pem).collect();
        pifleet_io::write_private(first, pem.as_bytes())?;
        let mut all = keys;
        for path in &self.files[1..] {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(found) = TrustedKey::all_from_pem(&text)
            {
                add(&mut all, found);
            }
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = all.clone();
        Ok(all)
    }
}

/// Appends the keys of `found` not in `keys` yet.
fn add(keys: &mut Vec<TrustedKey>, found: Vec<TrustedKey>) {
    for k in found {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use pifleet_shared::signing::CommandSigner;

    use super::*;

    fn key(seed: u8) -> TrustedKey {
        let s = CommandSigner::from_seed(&[seed; 32]).unwrap();
        TrustedKey {
            id: s.id(),
            key: s.verifying_key(),
        }
    }

    #[test]
    fn announced_keys_replace_the_controllers_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let managed = dir.path().join("release-keys.pem");
        let offline = dir.path().join("offline.pem");
        std::fs::write(&offline, key(9).to_pem()).unwrap();
        let files = [managed.clone(), offline.clone()];

        // Nothing announced yet: only the administrator's key.
        let keys = ReleaseKeys::load(&files).unwrap();
        assert_eq!(keys.current(), [key(9)]);

        let now = keys
            .replace(&[*key(1).key.as_bytes(), *key(2).key.as_bytes()])
            .unwrap();
        assert_eq!(now, [key(1), key(2), key(9)]);
        assert_eq!(keys.current(), now);
        // Durable: a restart reads the same set; the administrator's file is untouched.
        assert_eq!(ReleaseKeys::load(&files).unwrap().current(), now);
        assert_eq!(std::fs::read_to_string(&offline).unwrap(), key(9).to_pem());

        // A rotation drops the old controller key.
        keys.replace(&[*key(2).key.as_bytes()]).unwrap();
        assert_eq!(keys.current(), [key(2), key(9)]);

        // The administrator's files must exist and be whole; a damaged controller file
        // is trusted for nothing until the next announcement replaces it.
        let missing = [managed.clone(), dir.path().join("nope.pem")];
        assert!(matches!(
            ReleaseKeys::load(&missing),
            Err(KeysError::Read { .. })
        ));
        let damaged = "-----BEGIN PUBLIC KEY-----\nAAAA\n";
        std::fs::write(&offline, damaged).unwrap();
        assert!(matches!(
            ReleaseKeys::load(&files),
            Err(KeysError::Key { .. })
        ));
        std::fs::write(&offline, key(9).to_pem()).unwrap();
        std::fs::write(&managed, damaged).unwrap();
        assert_eq!(ReleaseKeys::load(&files).unwrap().current(), [key(9)]);
        assert!(matches!(
            ReleaseKeys::load(&[]).unwrap().replace(&[[0; 32]]),
            Err(KeysError::NoFile)
        ));
    }
}

//! The key files every controller of a fleet must hold alike, and the check that this one
//! does.
//!
//! Controllers sharing a PostgreSQL database each have a data dir with the same CA, command,
//! release and access-token keys (the database never holds a key). A controller with other
//! keys would sign commands its devices refuse, hand new devices keys the others do not
//! use, and refuse the others' access tokens. So the database records a digest of each key
//! file: `init` records them, and so does every `rotate …` that changes one; a controller
//! compares its own files with the record at start and every `auth.key_reload_s`, and
//! reports itself not ready, naming the files that differ, until they agree again (the
//! operator copies the files from the controller where they changed, as
//! `docs/SCALING.md` says). Meanwhile its dispatcher sends no command: the others do.
//!
//! With SQLite there is one controller and nothing to disagree with: it records its own.
//!
//! A digest is SHA-256 over a fixed prefix, the file's name and its bytes; for the files
//! holding secrets (the access-token keys, the previous command key) it reveals nothing of
//! them. The server certificate is left out: each controller may have its own.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::datadir::DataDir;
use crate::store::{Backend, Store, StoreError};
use crate::supervise::Health;

/// The readiness component this check reports as.
pub const COMPONENT: &str = Health::KEYS;

/// Why the key set could not be read or checked.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the key set recorded in the database is not readable ({0}); record this controller's with `pifleet-controller rotate adopt-keys`"
    )]
    Recorded(String),
}

/// Digests of a data dir's key files, by file name; a file that does not exist is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet(BTreeMap<String, String>);

/// How this controller's keys compare with the database's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agreement {
    /// The same files.
    Same,
    /// Nothing was recorded: this controller's keys are now the record.
    Recorded,
    /// These files differ (or exist on one side only).
    Differ(Vec<String>),
}

impl KeySet {
    /// Reads `dd`'s key files.
    pub fn read(dd: &DataDir) -> Result<Self, KeySetError> {
        let files = [
            dd.ca_cert(),
            dd.ca_previous_cert(),
            dd.command_pub(),
            dd.command_previous_key(),
            dd.release_pub(),
            dd.release_previous_pub(),
            dd.jwt_keys(),
        ];
        let mut set = BTreeMap::new();
        for path in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(KeySetError::Read {
                        path: path.display().to_string(),
                        source,
                    });
                }
            };
            let mut h = Sha256::new();
            h.update(b"pifleet key set v1\0");
            h.update(name.as_bytes());
            h.update([0]);
            h.update(&bytes);
            set.insert(name, hex::encode(h.finalize()));
        }
        Ok(Self(set))
    }

    fn to_json(&self) -> String {
        // A map of strings always serializes.
        serde_json::to_string(&self.0).unwrap_or_default()
    }

    fn from_json(text: &str) -> Result<Self, KeySetError> {
        serde_json::from_str(text)
            .map(Self)
            .map_err(|e| KeySetError::Recorded(e.to_string()))
    }

    /// The files whose digests differ between `self` and `other`, or that only one has.
    pub fn differences(&self, other: &KeySet) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .keys()
            .chain(other.0.keys())
            .filter(|n| self.0.get(*n) != other.0.get(*n))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Records `dd`'s key files as the ones every controller must hold (after `init`, a
/// rotation, or `rotate adopt-keys`).
pub async fn record(dd: &DataDir, store: &Store) -> Result<(), KeySetError> {
    store.set_key_set(&KeySet::read(dd)?.to_json()).await?;
    Ok(())
}

/// Compares `dd`'s key files with the record; records them when there is none, and always
/// on SQLite (one controller).
pub async fn check(dd: &DataDir, store: &Store) -> Result<Agreement, KeySetError> {
    let own = KeySet::read(dd)?;
    let recorded = match store.key_set().await? {
        Some(text) => Some(KeySet::from_json(&text)?),
        None => None,
    };
    match recorded {
        Some(r) if r == own => Ok(Agreement::Same),
        None => {
            store.set_key_set_if_absent(&own.to_json()).await?;
            // Another controller may have recorded first: compare with what stands.
            match store.key_set().await? {
                Some(text) if KeySet::from_json(&text)? != own => Ok(Agreement::Differ(
                    KeySet::from_json(&text)?.differences(&own),
                )),
                _ => Ok(Agreement::Recorded),
            }
        }
        Some(_) if store.backend() == Backend::Sqlite => {
            store.set_key_set(&own.to_json()).await?;
            Ok(Agreement::Recorded)
        }
        Some(r) => Ok(Agreement::Differ(r.differences(&own))),
    }
}

/// [`check`], told to `health`: not ready while the files differ or cannot be checked.
pub async fn report(dd: &DataDir, store: &Store, health: &Health) {
    match check(dd, store).await {
        Ok(Agreement::Same | Agreement::Recorded) => health.recovered(COMPONENT),
        Ok(Agreement::Differ(files)) => health.degraded(
            COMPONENT,
            &format!(
                "this controller's key files differ from those the database records for the \
                 fleet: {}; copy them from the controller where they last changed (or, if \
                 these are the right ones, `pifleet-controller rotate adopt-keys`)",
                files.join(", ")
            ),
        ),
        Err(e) => health.degraded(COMPONENT, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::store;

    async fn data_dir() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        crate::setup::init(&root, &[], None).await.unwrap();
        (tmp, DataDir::new(root))
    }

    #[tokio::test]
    async fn the_key_files_are_digested_by_name_and_content() {
        let (_t, dd) = data_dir().await;
        let a = KeySet::read(&dd).unwrap();
        let names: Vec<_> = a.0.keys().cloned().collect();
        assert_eq!(names, ["ca.crt", "command.pub", "jwt.key", "release.pub"]);
        // The server certificate is each controller's own.
        std::fs::write(dd.server_cert(), b"other").unwrap();
        assert_eq!(KeySet::read(&dd).unwrap(), a);
        std::fs::write(dd.jwt_keys(), b"other").unwrap();
        std::fs::write(dd.release_previous_pub(), b"new").unwrap();
        let b = KeySet::read(&dd).unwrap();
        assert_eq!(a.differences(&b), ["jwt.key", "release-previous.pub"]);
        assert_eq!(b.differences(&a), ["jwt.key", "release-previous.pub"]);
        // The digest is not the bare SHA-256 of the file (a secret's hash would be a
        // dictionary target).
        let bare = hex::encode(Sha256::digest(b"other"));
        assert_ne!(b.0["jwt.key"], bare);
    }

    /// Two controllers' data dirs on one database: the one whose keys are not the record
    /// is told which files differ (PostgreSQL); after a copy of those files it agrees. On
    /// SQLite the one controller's files are the record.
    #[tokio::test]
    async fn a_controller_with_other_keys_disagrees_until_it_has_the_same() {
        let (_d, s) = store().await;
        let (_a, first) = data_dir().await;
        let (_b, second) = data_dir().await;
        assert_eq!(check(&first, &s).await.unwrap(), Agreement::Recorded);
        assert_eq!(check(&first, &s).await.unwrap(), Agreement::Same);
        let got = check(&second, &s).await.unwrap();
        if s.backend() == Backend::Sqlite {
            assert_eq!(got, Agreement::Recorded);
            return;
        }
        assert_eq!(
            got,
            Agreement::Differ(vec![
                "ca.crt".into(),
                "command.pub".into(),
                "jwt.key".into(),
                "release.pub".into()
            ])
        );
        for f in ["ca.crt", "command.pub", "jwt.key", "release.pub"] {
            std::fs::copy(first.root().join(f), second.root().join(f)).unwrap();
        }
        assert_eq!(check(&second, &s).await.unwrap(), Agreement::Same);
        // A rotation on one records its new files: now the other differs.
        std::fs::write(first.jwt_keys(), b"rotated").unwrap();
        record(&first, &s).await.unwrap();
        assert_eq!(
            check(&second, &s).await.unwrap(),
            Agreement::Differ(vec!["jwt.key".into()])
        );
        assert_eq!(check(&first, &s).await.unwrap(), Agreement::Same);
    }

    #[tokio::test]
    async fn an_unreadable_record_is_a_clear_error() {
        let (_d, s) = store().await;
        let (_a, dd) = data_dir().await;
        s.set_key_set("not json").await.unwrap();
        let err = check(&dd, &s).await.unwrap_err();
        assert!(err.to_string().contains("adopt-keys"), "{err}");
    }
}

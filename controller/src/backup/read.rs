//! Reading a backup back: its checksum, decryption, the tar's structure, the metadata and
//! the database inside. `verify` does all of it into a throw-away directory; `restore`
//! unpacks the same way into the directory it then moves into place.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{
    BackupError, DATABASE, FORMAT_VERSION, METADATA, Metadata, RELEASES, allowed_name,
    checked_copy, io_err, read_checksum, sha256_file, verified_path,
};
use crate::store::snapshot::{CopyInfo, latest_schema_version};

/// What a sound backup holds.
#[derive(Debug, Clone)]
pub struct Verified {
    pub metadata: Metadata,
    pub sha256: String,
}

/// Checks a backup end to end: its checksum, that it decrypts (with `identity` when it is
/// encrypted), that the tar holds only what a backup holds and all that its metadata
/// lists, and that the database inside passes `PRAGMA integrity_check` and is not newer
/// than this binary. On success, records the checksum in `<file>.verified` for `list`.
pub async fn verify(file: &Path, identity: Option<&Path>) -> Result<Verified, BackupError> {
    let scratch = tempfile::Builder::new()
        .prefix(".pifleet-verify-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let verified = unpack(file, identity, scratch.path()).await?;
    // Best effort: the backup may sit on a read-only medium.
    let _ = pifleet_io::write_private(&verified_path(file), verified.sha256.as_bytes());
    Ok(verified)
}

/// Checks `file` as [`verify`] does, leaving its files in `dest` (an empty private
/// directory), and returns its metadata.
pub(super) async fn unpack(
    file: &Path,
    identity: Option<&Path>,
    dest: &Path,
) -> Result<Verified, BackupError> {
    let (file, identity, dest_owned) = (
        file.to_owned(),
        identity.map(Path::to_owned),
        dest.to_owned(),
    );
    let (metadata, sha256) = tokio::task::spawn_blocking(move || {
        let expected = read_checksum(&file)?;
        let actual = sha256_file(&file)?;
        if expected != actual {
            return Err(BackupError::Checksum {
                path: file,
                expected,
                actual,
            });
        }
        let reader = open(&file, identity.as_deref())?;
        let metadata = extract(&file, reader, &dest_owned)?;
        Ok((metadata, actual))
    })
    .await
    .map_err(BackupError::Task)??;
    let info = checked_copy(&dest.join(DATABASE)).await?;
    check_metadata(&metadata, &info)?;
    Ok(Verified { metadata, sha256 })
}

/// The backup's plaintext: the file itself, or what age decrypts it to.
fn open(file: &Path, identity: Option<&Path>) -> Result<Box<dyn Read + Send>, BackupError> {
    let f = BufReader::new(File::open(file).map_err(io_err(file))?);
    let encrypted = file.to_string_lossy().ends_with(".age");
    if !encrypted {
        return Ok(Box::new(f));
    }
    let Some(identity) = identity else {
        return Err(BackupError::NeedsIdentity(file.to_owned()));
    };
    let identities = age::IdentityFile::from_file(identity.to_string_lossy().into_owned())
        .map_err(|e| BackupError::Identity {
            path: identity.to_owned(),
            reason: e.to_string(),
        })?
        .into_identities()
        .map_err(|e| BackupError::Identity {
            path: identity.to_owned(),
            reason: e.to_string(),
        })?;
    let decrypt = |source| BackupError::Decrypt {
        path: file.to_owned(),
        source,
    };
    let reader = age::Decryptor::new_buffered(f)
        .map_err(decrypt)?
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(decrypt)?;
    Ok(Box::new(reader))
}

/// Unpacks the tar into `dest` (files 0600, `releases/` 0700), refusing any entry a backup
/// does not hold, and returns the parsed metadata once every listed file was found.
fn extract(file: &Path, reader: impl Read, dest: &Path) -> Result<Metadata, BackupError> {
    let malformed = |reason: String| BackupError::Malformed {
        path: file.to_owned(),
        reason,
    };
    let mut archive = tar::Archive::new(reader);
    let mut metadata: Option<Metadata> = None;
    let mut seen: Vec<String> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| malformed(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| malformed(format!("broken tar entry: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| malformed(format!("entry name: {e}")))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular || !allowed_name(&name) {
            return Err(malformed(format!("unexpected entry {name:?}")));
        }
        if seen.contains(&name) {
            return Err(malformed(format!("{name} appears twice")));
        }
        if name == METADATA {
            if !seen.is_empty() {
                return Err(malformed("metadata.json is not the first entry".into()));
            }
            let mut text = Vec::new();
            entry
                .by_ref()
                .take(1024 * 1024)
                .read_to_end(&mut text)
                .map_err(|e| malformed(format!("metadata.json: {e}")))?;
            let m: Metadata = serde_json::from_slice(&text)
                .map_err(|e| malformed(format!("metadata.json: {e}")))?;
            if m.format != FORMAT_VERSION {
                return Err(malformed(format!(
                    "format version {} (this controller reads {FORMAT_VERSION})",
                    m.format
                )));
            }
            metadata = Some(m);
        } else {
            if metadata.is_none() {
                return Err(malformed("metadata.json is not the first entry".into()));
            }
            let path = dest.join(&name);
            if name.starts_with(RELEASES) {
                let dir = dest.join(RELEASES);
                if !dir.exists() {
                    pifleet_io::create_private_dir(&dir).map_err(|e| match e {
                        pifleet_io::FileError::Io { path, source } => {
                            BackupError::Io { path, source }
                        }
                    })?;
                }
            }
            write_new_private(&path, &mut entry)?;
        }
        seen.push(name);
    }
    let Some(metadata) = metadata else {
        return Err(malformed("no metadata.json".into()));
    };
    let mut listed = metadata.files.clone();
    listed.sort();
    let mut found: Vec<String> = seen.into_iter().filter(|n| n != METADATA).collect();
    found.sort();
    if listed != found {
        return Err(malformed(
            "its files do not match those metadata.json lists".into(),
        ));
    }
    if !found.iter().any(|n| n == DATABASE) {
        return Err(malformed("no database".into()));
    }
    Ok(metadata)
}

/// Creates `path` (0600, never replacing a file), copies `data` into it and fsyncs it.
fn write_new_private(path: &Path, data: &mut impl Read) -> Result<(), BackupError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    io::copy(data, &mut f).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The metadata agrees with the database it came with, which this binary can open.
fn check_metadata(m: &Metadata, info: &CopyInfo) -> Result<(), BackupError> {
    let ours = latest_schema_version();
    if info.schema_version > ours || m.schema_version > ours {
        return Err(BackupError::TooNew {
            backup: info.schema_version.max(m.schema_version),
            ours,
            version: m.controller_version.clone(),
        });
    }
    if m.schema_version != info.schema_version
        || m.devices != info.devices
        || m.samples != info.samples
    {
        return Err(BackupError::Malformed {
            path: PathBuf::from(METADATA),
            reason: format!(
                "metadata.json (schema {}, {} devices, {} samples) does not match the database \
                 (schema {}, {} devices, {} samples)",
                m.schema_version,
                m.devices,
                m.samples,
                info.schema_version,
                info.devices,
                info.samples
            ),
        });
    }
    Ok(())
}

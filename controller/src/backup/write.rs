//! Making a backup: snapshot the database, pack it with the data dir's files into a tar
//! (through age when a recipient is given), and publish it only once it is whole.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::{
    BackupError, DATABASE, FORMAT_VERSION, Hashing, METADATA, Metadata, PREFIX, RELEASES,
    checksum_path, data_files, io_err, snapshot_db, stamp, sync_dir,
};
use crate::datadir::DataDir;
use crate::store::{Store, now_ms};

/// A backup just written.
#[derive(Debug, Clone)]
pub struct Created {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub metadata: Metadata,
}

/// Writes one backup of `dd` (whose database `store` has open) into `out` (created 0700
/// if missing), encrypted to `recipient` when one is given. Nothing is left behind on failure.
pub async fn create(
    dd: &DataDir,
    store: &Store,
    out: &Path,
    recipient: Option<&str>,
) -> Result<Created, BackupError> {
    let recipient = recipient
        .map(|r| {
            age::x25519::Recipient::from_str(r.trim())
                .map_err(|e| BackupError::Recipient(e.to_owned()))
        })
        .transpose()?;
    // A missing directory is made private; an existing one (a mounted disk, say) keeps its
    // mode: the backups in it are 0600 either way.
    if !out.is_dir() {
        pifleet_io::create_private_dir(out).map_err(|e| match e {
            pifleet_io::FileError::Io { path, source } => BackupError::Io { path, source },
        })?;
    }
    // The database copy is made beside the backup (same file system, same privacy) in a
    // directory removed when this returns.
    let staging = tempfile::Builder::new()
        .prefix(".pifleet-backup-")
        .tempdir_in(out)
        .map_err(io_err(out))?;
    let db_copy = staging.path().join(DATABASE);
    let created_at_ms = now_ms();
    let info = snapshot_db(store, &db_copy).await?;
    let (dd, out) = (dd.clone(), out.to_owned());
    tokio::task::spawn_blocking(move || {
        let written = pack(&dd, &out, &db_copy, recipient, created_at_ms, info);
        drop(staging);
        written
    })
    .await
    .map_err(BackupError::Task)?
}

fn pack(
    dd: &DataDir,
    out: &Path,
    db_copy: &Path,
    recipient: Option<age::x25519::Recipient>,
    created_at_ms: i64,
    info: crate::store::snapshot::CopyInfo,
) -> Result<Created, BackupError> {
    let mut files: Vec<(String, PathBuf)> = vec![(DATABASE.to_owned(), db_copy.to_owned())];
    for (path, required) in data_files(dd) {
        let name = path
            .strip_prefix(dd.root())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.exists() {
            files.push((name, path));
        } else if required {
            return Err(io_err(&path)(std::io::ErrorKind::NotFound.into()));
        }
    }
    files.extend(release_files(dd)?);
    let metadata = Metadata {
        format: FORMAT_VERSION,
        controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        schema_version: info.schema_version,
        created_at_ms,
        created_at: stamp(created_at_ms),
        devices: info.devices,
        samples: info.samples,
        files: files.iter().map(|(n, _)| n.clone()).collect(),
    };
    let ext = if recipient.is_some() {
        "tar.age"
    } else {
        "tar"
    };
    let final_path = out.join(format!("{PREFIX}{}.{ext}", metadata.created_at));
    if final_path.exists() {
        return Err(BackupError::Exists(final_path));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".pifleet-backup-")
        .suffix(".partial")
        .tempfile_in(out)
        .map_err(io_err(out))?;
    let tmp_path = tmp.path().to_owned();
    let file = tmp.as_file().try_clone().map_err(io_err(&tmp_path))?;
    let mut sink = Hashing {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let json = serde_json::to_vec_pretty(&metadata).map_err(|e| BackupError::Malformed {
        path: tmp_path.clone(),
        reason: e.to_string(),
    })?;
    match recipient {
        Some(r) => {
            let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                .map_err(|e| BackupError::Recipient(e.to_string()))?;
            let w = enc.wrap_output(&mut sink).map_err(io_err(&tmp_path))?;
            let w = write_tar(w, &json, &files, &tmp_path)?;
            w.finish().map_err(io_err(&tmp_path))?;
        }
        None => {
            write_tar(&mut sink, &json, &files, &tmp_path)?;
        }
    }
    sink.flush().map_err(io_err(&tmp_path))?;
    let sha256 = hex::encode(sink.hasher.finalize());
    tmp.as_file().sync_all().map_err(io_err(&tmp_path))?;
    let size = tmp.as_file().metadata().map_err(io_err(&tmp_path))?.len();
    // The checksum first: once the backup has its name, its checksum is there.
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sum_path = checksum_path(&final_path);
    pifleet_io::write_private(&sum_path, format!("{sha256}  {name}\n").as_bytes()).map_err(
        |e| match e {
            pifleet_io::FileError::Io { path, source } => BackupError::Io { path, source },
        },
    )?;
    if let Err(e) = tmp.persist_noclobber(&final_path) {
        let _ = fs::remove_file(&sum_path);
        return Err(io_err(&final_path)(e.error));
    }
    sync_dir(out)?;
    Ok(Created {
        path: final_path,
        sha256,
        size,
        metadata,
    })
}

/// The stored releases, as `releases/<name>` archive entries.
fn release_files(dd: &DataDir) -> Result<Vec<(String, PathBuf)>, BackupError> {
    let dir = dd.releases_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(io_err(&dir))?.is_file();
        // Temporary files of a release being stored start with a dot; they are not kept.
        if is_file && !name.starts_with('.') {
            out.push((format!("{RELEASES}/{name}"), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the tar (metadata first, then each file, mode 0600) and hands the writer back.
fn write_tar<W: Write>(
    w: W,
    metadata: &[u8],
    files: &[(String, PathBuf)],
    tmp: &Path,
) -> Result<W, BackupError> {
    let mut tar = tar::Builder::new(w);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut header = tar::Header::new_gnu();
    header.set_size(metadata.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, METADATA, metadata)
        .map_err(io_err(tmp))?;
    for (name, path) in files {
        let mut f = File::open(path).map_err(io_err(path))?;
        let len = f.metadata().map_err(io_err(path))?.len();
        let mut header = tar::Header::new_gnu();
        header.set_size(len);
        header.set_mode(0o600);
        header.set_cksum();
        // The length read from the open file holds even if the file is replaced meanwhile
        // (the data dir's files are replaced by rename, never rewritten in place); `take`
        // keeps the entry at that length whatever happens.
        tar.append_data(&mut header, name, (&mut f).take(len))
            .map_err(io_err(path))?;
    }
    tar.into_inner().map_err(io_err(tmp))
}

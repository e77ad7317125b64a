//! The controller's data directory: its layout, restrictive permissions, and atomic writes.
//!
//! ```text
//! DATA/            0700
//!   config.toml    0600  documented defaults, edited by the operator
//!   ca.crt         0644-equivalent content, stored 0600  CA certificate (public)
//!   ca.key         0600  CA private key
//!   server.crt     0600  certificate of the MQTT and HTTPS listeners
//!   server.key     0600
//!   command.key    0600  Ed25519 command-signing key (PKCS#8 PEM)
//!   command.pub    0600  its public half, handed to devices at enrollment
//!   release.key    0600  Ed25519 release-signing key (PKCS#8 PEM); may be kept offline
//!   release.pub    0600  its public half, pinned by devices
//!   jwt.key        0600  keys that sign admin access tokens (newest first, with key ids)
//!   scrape.token   0600  bearer token for Prometheus scrapes
//!   crl.pem        0600  revoked device certificates, reloaded by the running controller
//!   crl.lock       0600  held while a process (CLI or controller) publishes crl.pem
//!   pifleet.db     0600  SQLite database (WAL)
//!   serve.json     0600  addresses the running controller bound (for scripts and tests)
//!   releases/      0700  release archives and signed manifests, named by their SHA-256:
//!     <sha256>.tar.gz     the canonical archive
//!     <sha256>.manifest   the signed manifest (postcard), named by its own digest
//!   backups/       0700  scheduled and manual backups (`backup.dir`; see `backup`)
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pifleet_io::FileError;

/// Errors about the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{0} already exists and is not empty; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("{0} does not exist; run `pifleet-controller init --data-dir {0}` first")]
    Missing(PathBuf),
    #[error("{path} is open to group/others (mode {mode:o}); run `chmod go-rwx {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "{path} is owned by {owner} (uid {uid}), but this command runs as uid {me}; run it as \
         the owner, e.g. `sudo -u {owner} pifleet-controller …`, so nothing it writes \
         becomes unreadable to the service"
    )]
    Owner {
        path: PathBuf,
        owner: String,
        uid: u32,
        me: u32,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<FileError> for DataDirError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Io { path, source } => DataDirError::Io { path, source },
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The CA a `rotate ca` replaced, trusted (and its CRL signed) until `rotate ca
    /// --finish`.
    pub fn ca_previous_cert(&self) -> PathBuf {
        self.root.join("ca-previous.crt")
    }
    pub fn ca_previous_key(&self) -> PathBuf {
        self.root.join("ca-previous.key")
    }
    /// The CA of the controllers' identities at an external broker (`broker-config
    /// controller-identity`), apart from the devices' CA; made on first use.
    pub fn controllers_ca_cert(&self) -> PathBuf {
        self.root.join("controllers-ca.crt")
    }
    pub fn controllers_ca_key(&self) -> PathBuf {
        self.root.join("controllers-ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn command_key(&self) -> PathBuf {
        self.root.join("command.key")
    }
    pub fn command_pub(&self) -> PathBuf {
        self.root.join("command.pub")
    }
    pub fn release_key(&self) -> PathBuf {
        self.root.join("release.key")
    }
    pub fn release_pub(&self) -> PathBuf {
        self.root.join("release.pub")
    }
    /// Release public keys still trusted during a rotation's overlap (`rotate release-key`).
    pub fn release_previous_pub(&self) -> PathBuf {
        self.root.join("release-previous.pub")
    }
    /// Command private keys still used during a rotation's overlap (`rotate command-key`).
    pub fn command_previous_key(&self) -> PathBuf {
        self.root.join("command-previous.key")
    }
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }
    /// A stored release archive, by its SHA-256.
    pub fn release_archive(&self, sha256: &[u8; 32]) -> PathBuf {
        self.releases_dir()
            .join(format!("{}.tar.gz", pifleet_shared::token::to_hex(sha256)))
    }
    /// A stored signed manifest, by the SHA-256 of its bytes.
    pub fn release_manifest(&self, sha256: &[u8; 32]) -> PathBuf {
        self.releases_dir().join(format!(
            "{}.manifest",
            pifleet_shared::token::to_hex(sha256)
        ))
    }
    pub fn jwt_keys(&self) -> PathBuf {
        self.root.join("jwt.key")
    }
    pub fn scrape_token(&self) -> PathBuf {
        self.root.join("scrape.token")
    }
    pub fn crl(&self) -> PathBuf {
        self.root.join("crl.pem")
    }
    pub fn crl_lock(&self) -> PathBuf {
        self.root.join("crl.lock")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("pifleet.db")
    }
    pub fn serve_state(&self) -> PathBuf {
        self.root.join("serve.json")
    }

    /// Files that hold secrets: each must be 0600 or stricter.
    pub fn secret_files(&self) -> [PathBuf; 5] {
        [
            self.ca_key(),
            self.server_key(),
            self.command_key(),
            self.jwt_keys(),
            self.scrape_token(),
        ]
    }

    /// Secrets that may be absent (the release key may live offline); checked when present.
    pub fn optional_secret_files(&self) -> [PathBuf; 4] {
        [
            self.release_key(),
            self.command_previous_key(),
            self.ca_previous_key(),
            self.controllers_ca_key(),
        ]
    }

    /// Creates the directory (0700) for `init`; refuses an existing non-empty one.
    pub fn create_new(&self) -> Result<(), DataDirError> {
        if self.root.exists() {
            let mut entries = fs::read_dir(&self.root).map_err(io(&self.root))?;
            if entries.next().is_some() {
                return Err(DataDirError::Exists(self.root.clone()));
            }
        }
        Ok(pifleet_io::create_private_dir(&self.root)?)
    }

    /// Checks, before anything is opened or written, that the directory exists, that this
    /// process runs as its owner (a command run as another user, root say, would leave
    /// files behind that the service cannot read), and that neither the directory nor any
    /// secret in it is open to other users or owned by someone else.
    pub fn check(&self) -> Result<(), DataDirError> {
        self.check_dir()?;
        let me = nix::unistd::geteuid().as_raw();
        for path in self.secret_files() {
            let meta = fs::metadata(&path).map_err(io(&path))?;
            owned_by(&path, &meta, me)?;
            private(&path, &meta)?;
        }
        for path in self.optional_secret_files() {
            match fs::metadata(&path) {
                Ok(meta) => {
                    owned_by(&path, &meta, me)?;
                    private(&path, &meta)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }

    /// The part of [`DataDir::check`] about the directory itself: it exists, belongs to
    /// this process's user and is open to nobody else.
    pub fn check_dir(&self) -> Result<(), DataDirError> {
        let me = nix::unistd::geteuid().as_raw();
        let meta = match fs::metadata(&self.root) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataDirError::Missing(self.root.clone()));
            }
            Err(e) => return Err(io(&self.root)(e)),
        };
        owned_by(&self.root, &meta, me)?;
        if !self.config().exists() {
            return Err(DataDirError::Missing(self.root.clone()));
        }
        private(&self.root, &meta)
    }
}

fn owned_by(path: &Path, meta: &fs::Metadata, me: u32) -> Result<(), DataDirError> {
    use std::os::unix::fs::MetadataExt;
    let uid = meta.uid();
    if uid == me {
        return Ok(());
    }
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    Err(DataDirError::Owner {
        path: path.to_owned(),
        owner,
        uid,
        me,
    })
}

fn private(path: &Path, meta: &fs::Metadata) -> Result<(), DataDirError> {
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(DataDirError::Permissions {
            path: path.to_owned(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

/// [`pifleet_io::write_private`] (atomic, 0600, durable) with the data directory's error.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), DataDirError> {
    Ok(pifleet_io::write_private(path, data)?)
}

/// Waits for the exclusive lock on `path` (a lock file, created 0600 if missing), which
/// serializes processes sharing the data dir; released when the returned value is dropped.
pub fn lock_exclusive(path: &Path) -> std::io::Result<nix::fcntl::Flock<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_refuses_non_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path().join("d"));
        dd.create_new().unwrap();
        let mode = fs::metadata(dd.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        write_private(&dd.config(), b"x").unwrap();
        assert!(matches!(dd.create_new(), Err(DataDirError::Exists(_))));
    }

    #[test]
    fn check_refuses_readable_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path());
        fs::set_permissions(dd.root(), fs::Permissions::from_mode(0o700)).unwrap();
        write_private(&dd.config(), b"").unwrap();
        for p in dd.secret_files() {
            write_private(&p, b"k").unwrap();
        }
        dd.check().unwrap();
        fs::set_permissions(dd.ca_key(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = dd.check().unwrap_err();
        assert!(
            matches!(err, DataDirError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        fs::set_permissions(dd.ca_key(), fs::Permissions::from_mode(0o600)).unwrap();
        dd.check().unwrap();
        // The release key may be absent (kept offline), but when present it is private.
        write_private(&dd.release_key(), b"k").unwrap();
        dd.check().unwrap();
        fs::set_permissions(dd.release_key(), fs::Permissions::from_mode(0o640)).unwrap();
        let err = dd.check().unwrap_err();
        assert!(
            matches!(err, DataDirError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        fs::remove_file(dd.release_key()).unwrap();
        dd.check().unwrap();
        // The directory itself must be private too.
        fs::set_permissions(dd.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = dd.check().unwrap_err();
        assert!(
            matches!(err, DataDirError::Permissions { mode: 0o755, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-rwx"), "{err}");
    }

    #[test]
    fn another_owner_is_named_with_sudo() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = fs::metadata(tmp.path()).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        owned_by(tmp.path(), &meta, me).unwrap();
        let err = owned_by(tmp.path(), &meta, me + 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sudo -u "), "{msg}");
        assert!(msg.contains(&format!("uid {me}")), "{msg}");
    }
}

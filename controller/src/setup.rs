//! A data dir's keys and secrets: `init` makes a complete data dir (CA, server certificate,
//! command key, release key, access-token key, scrape token, config, database, CRL, first
//! admin), and `serve` loads them here, making the secrets a data dir from an older version
//! lacks.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use pifleet_shared::release::ReleaseSigner;
use pifleet_shared::signing::TrustedKey;
use rand::RngCore;

use crate::auth::Role;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::Passwords;
use crate::auth::users::{self, UserError};
use crate::config::{self, Config};
use crate::datadir::{DataDir, DataDirError, write_private};
use crate::pki::{self, Ca, crl};
use crate::store::StoreError;

/// Why a data dir could not be made or its secrets not be read.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(String),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("publishing the CRL: {0}")]
    Crl(#[from] crl::CrlError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("command key: {0}")]
    CommandKey(String),
    #[error("release key: {0}")]
    ReleaseKey(String),
    #[error(
        "{} is not in the data dir (kept offline?); sign with the key file given explicitly",
        .0.display()
    )]
    ReleaseKeyAbsent(PathBuf),
    #[error("access-token key: {0}")]
    AccessTokenKey(String),
    #[error("{} holds no usable token; delete it and restart to make a new one", .0.display())]
    ScrapeToken(PathBuf),
    #[error("first admin: {0}")]
    User(#[from] UserError),
    #[error("{0}")]
    Internal(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a whole file, naming it in the error.
pub fn read_to_string(path: &Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(|source| SetupError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The command public key (PEM) handed to devices.
pub fn command_public_key(dd: &DataDir) -> Result<String, SetupError> {
    read_to_string(&dd.command_pub())
}

/// Creates a new data dir: CA (a new self-signed one, or `ca`: an intermediate CA whose
/// root is kept elsewhere), server certificate, command key, config, database, CRL.
/// Everything is built in a sibling temp dir and renamed into place at the end, so a failure
/// leaves nothing half-written. An existing empty dir (the Debian package's
/// `/var/lib/pifleet`, owned by the service's user in a parent only root may write) is
/// filled from a temp dir inside it instead, `config.toml` last, and emptied again on failure.
pub async fn init(
    root: &Path,
    hostnames: &[String],
    ca: Option<Ca>,
) -> Result<InitReport, SetupError> {
    init_with(root, hostnames, ca, None).await
}

/// The PostgreSQL database `init` puts the fleet in, instead of the data dir's SQLite file.
#[derive(Debug, Clone)]
pub struct StoreChoice {
    /// `store.url` (no password in it).
    pub url: String,
    /// `store.password_file`, if the password is not in `PIFLEET_STORE_PASSWORD`.
    pub password_file: Option<std::path::PathBuf>,
}

/// [`init`], with the fleet in the PostgreSQL database `store` names, when given: the
/// configuration written names it, and the database must hold no fleet yet (a further
/// replica is set up from a copy of the first one's data dir, not by `init`).
pub async fn init_with(
    root: &Path,
    hostnames: &[String],
    ca: Option<Ca>,
    store: Option<&StoreChoice>,
) -> Result<InitReport, SetupError> {
    let target = DataDir::new(root);
    let existed = root.is_dir();
    target.create_new()?; // refuses an existing non-empty dir
    if existed {
        return init_in_place(&target, hostnames, ca, store).await;
    }
    let parent = root.parent().unwrap_or(Path::new("."));
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let staging = DataDir::new(parent.join(format!(".{name}.init-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(staging.root());
    staging.create_new()?;
    let report = match populate(&staging, hostnames, ca, store).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(staging.root());
            return Err(e);
        }
    };
    std::fs::rename(staging.root(), root).map_err(|source| SetupError::Io {
        path: root.display().to_string(),
        source,
    })?;
    Ok(report)
}

/// `init` into the existing empty dir `target`: staged in `target/.init-PID`, then each entry
/// renamed up, `config.toml` (what the unit waits for) last. On failure `target` is emptied.
async fn init_in_place(
    target: &DataDir,
    hostnames: &[String],
    ca: Option<Ca>,
    store: Option<&StoreChoice>,
) -> Result<InitReport, SetupError> {
    let root = target.root();
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SetupError::Io { path, source }
    };
    // Private, as a new data dir is (this fails unless we own it).
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
    let staging = DataDir::new(root.join(format!(".init-{}", std::process::id())));
    let done = async {
        staging.create_new()?;
        let report = populate(&staging, hostnames, ca, store).await?;
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(staging.root())
            .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(io(staging.root()))?;
        let config = target.config();
        let last = config.file_name();
        names.sort_by_key(|n| Some(n.as_os_str()) == last);
        for name in names {
            let to = root.join(&name);
            std::fs::rename(staging.root().join(&name), &to).map_err(io(&to))?;
        }
        std::fs::remove_dir(staging.root()).map_err(io(staging.root()))?;
        Ok::<_, SetupError>(report)
    }
    .await;
    if done.is_err() {
        // It was empty: empty it again (best effort; the error reported is the first).
        if let Ok(entries) = std::fs::read_dir(root) {
            for path in entries.flatten().map(|e| e.path()) {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    done
}

/// The default configuration with `[store]` naming the PostgreSQL database.
fn with_store(default: &str, choice: &StoreChoice) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut lines = format!("url = {}\n", quote(&choice.url));
    if let Some(f) = &choice.password_file {
        lines.push_str(&format!(
            "password_file = {}\n",
            quote(&f.to_string_lossy())
        ));
    }
    default.replacen("[store]\n", &format!("[store]\n{lines}"), 1)
}

/// What `init` made that the operator must see once.
#[derive(Debug)]
pub struct InitReport {
    /// Name of the first admin.
    pub admin_name: String,
    /// Their one-time password: shown once, changed at first sign-in.
    pub admin_password: String,
    /// SHA-256 of the root CA certificate, which devices pin.
    pub ca_fingerprint: String,
}

/// Name of the admin `init` creates.
pub const FIRST_ADMIN: &str = "admin";

async fn populate(
    dd: &DataDir,
    hostnames: &[String],
    ca: Option<Ca>,
    store: Option<&StoreChoice>,
) -> Result<InitReport, SetupError> {
    let label = hostnames
        .first()
        .map(String::as_str)
        .unwrap_or("controller");
    let ca = match ca {
        Some(ca) => ca,
        None => Ca::generate(label)?,
    };
    write_private(&dd.ca_cert(), ca.cert_pem.as_bytes())?;
    write_private(&dd.ca_key(), ca.key_pem().as_bytes())?;
    let (cert, key) = ca.issue_server(hostnames)?;
    write_private(&dd.server_cert(), cert.as_bytes())?;
    write_private(&dd.server_key(), key.as_bytes())?;

    write_key_pair(&dd.command_key(), &dd.command_pub(), SetupError::CommandKey)?;
    write_key_pair(&dd.release_key(), &dd.release_pub(), SetupError::ReleaseKey)?;

    JwtKeys::generate()
        .save(&dd.jwt_keys())
        .map_err(|e| SetupError::AccessTokenKey(e.to_string()))?;
    write_private(&dd.scrape_token(), new_scrape_token().as_bytes())?;

    let text = match store {
        None => config::DEFAULT_TOML.to_owned(),
        Some(choice) => with_store(config::DEFAULT_TOML, choice),
    };
    let cfg = Config::parse(&text, &dd.config())?;
    write_private(&dd.config(), text.as_bytes())?;
    let store = crate::database::open(dd, &cfg.store, true)
        .await
        .map_err(|e| SetupError::Database(e.to_string()))?;
    if cfg.store.url.is_some() && !store.list_users().await?.is_empty() {
        return Err(SetupError::Database(
            "the database already holds a fleet: set up a further controller from a copy of \
             the first one's data dir (docs/SCALING.md), not with init"
                .into(),
        ));
    }
    crl::publish(dd, &store, &ca, cfg.pki.crl_next_update_days).await?;
    // Further controllers sharing the database must hold these same key files.
    crate::rotation::keyset::record(dd, &store)
        .await
        .map_err(|e| SetupError::Database(e.to_string()))?;
    let passwords =
        Passwords::new(cfg.auth.argon2_cost()).map_err(|e| UserError::Hash(e.to_string()))?;
    let admin = users::create_user(
        &store,
        users::hash_with(&passwords),
        FIRST_ADMIN,
        Role::Admin,
        None,
        true,
    )
    .await?;
    store
        .append_audit(&crate::audit::Event::cli(
            "user.create",
            FIRST_ADMIN,
            "ok",
            "role=admin; first admin created by init",
        ))
        .await?;
    store.close().await;
    let admin_password = admin
        .one_time_password
        .ok_or(SetupError::Internal("no one-time password was generated"))?;
    Ok(InitReport {
        admin_name: admin.name,
        admin_password,
        ca_fingerprint: ca.fingerprint()?,
    })
}

/// Writes a fresh Ed25519 key pair: the private key as PKCS#8 PEM, the public key as SPKI
/// PEM, both 0600. `err` names which key failed.
pub(crate) fn write_key_pair(
    key_path: &Path,
    pub_path: &Path,
    err: fn(String) -> SetupError,
) -> Result<(), SetupError> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let key_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    let pub_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    write_private(key_path, key_pem.as_bytes())?;
    write_private(pub_path, pub_pem.as_bytes())?;
    Ok(())
}

/// Makes the release key pair for a data dir from before releases existed. A data dir
/// with `release.pub` but no `release.key` keeps its key offline: nothing is made then
/// (a new key would sign releases the devices do not trust). A lost `release.pub` is
/// derived again from `release.key`.
fn ensure_release_key(dd: &DataDir) -> Result<(), SetupError> {
    let (key, public) = (dd.release_key(), dd.release_pub());
    match (key.exists(), public.exists()) {
        (false, false) => {
            write_key_pair(&key, &public, SetupError::ReleaseKey)?;
            tracing::info!(path = %key.display(), "created the release signing key");
        }
        (true, false) => {
            let pem = read_to_string(&key)?;
            let signing = SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| SetupError::ReleaseKey(format!("{}: {e}", key.display())))?;
            let pub_pem = signing
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| SetupError::ReleaseKey(e.to_string()))?;
            write_private(&public, pub_pem.as_bytes())?;
            tracing::info!(path = %public.display(), "wrote the release public key again");
        }
        (false, true) | (true, true) => {}
    }
    Ok(())
}

/// The release-signing key in a PKCS#8 PEM file: the data dir's `release.key`, or a key
/// kept elsewhere and named by the operator.
pub fn load_release_signer(path: &Path) -> Result<ReleaseSigner, SetupError> {
    let pem = read_to_string(path)?;
    ReleaseSigner::from_pkcs8_pem(&pem)
        .map_err(|e| SetupError::ReleaseKey(format!("{}: {e}", path.display())))
}

/// The data dir's release-signing key; a clear error when it is kept offline.
pub fn release_signer(dd: &DataDir) -> Result<ReleaseSigner, SetupError> {
    let path = dd.release_key();
    if !path.exists() {
        return Err(SetupError::ReleaseKeyAbsent(path));
    }
    load_release_signer(&path)
}

/// The release public key devices pin (`release.pub`).
pub fn release_public_key(dd: &DataDir) -> Result<TrustedKey, SetupError> {
    let path = dd.release_pub();
    TrustedKey::from_pem(&read_to_string(&path)?)
        .map_err(|e| SetupError::ReleaseKey(format!("{}: {e}", path.display())))
}

/// The release keys devices are told to trust: `release.pub`, then, during a rotation's
/// overlap, the previous ones (`release-previous.pub`).
pub fn release_public_keys(dd: &DataDir) -> Result<Vec<TrustedKey>, SetupError> {
    let mut keys = vec![release_public_key(dd)?];
    let path = dd.release_previous_pub();
    if path.exists() {
        let previous = TrustedKey::all_from_pem(&read_to_string(&path)?)
            .map_err(|e| SetupError::ReleaseKey(format!("{}: {e}", path.display())))?;
        for k in previous {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    Ok(keys)
}

/// A data dir made by an older version may lack the access-token keys, the scrape token
/// or the release key: make them.
pub fn ensure_secrets(dd: &DataDir) -> Result<(), SetupError> {
    ensure_release_key(dd)?;
    let path = dd.jwt_keys();
    if !path.exists() {
        JwtKeys::generate()
            .save(&path)
            .map_err(|e| SetupError::AccessTokenKey(e.to_string()))?;
        tracing::info!(path = %path.display(), "created the access-token signing key");
    }
    let path = dd.scrape_token();
    if !path.exists() {
        write_private(&path, new_scrape_token().as_bytes())?;
        tracing::info!(path = %path.display(), "created the Prometheus scrape token");
    }
    Ok(())
}

/// A fresh Prometheus scrape token (256 random bits).
pub fn new_scrape_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("pfs1.{}\n", pifleet_shared::token::to_hex(&b))
}

/// The scrape token from the data dir.
pub fn scrape_token(dd: &DataDir) -> Result<String, SetupError> {
    let t = read_to_string(&dd.scrape_token())?.trim().to_owned();
    if t.len() < 32 {
        return Err(SetupError::ScrapeToken(dd.scrape_token()));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The signer and the public key file belong together.
    fn assert_pair(dd: &DataDir) {
        let signer = release_signer(dd).unwrap();
        let public = release_public_key(dd).unwrap();
        assert_eq!(signer.id(), public.id);
        assert_eq!(signer.public(), &public);
    }

    /// The Debian package's data dir: empty, made by root, in a parent the service's user
    /// may not write. `init` fills it without writing the parent, or leaves it empty.
    #[tokio::test]
    async fn init_fills_an_existing_empty_dir_without_touching_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let parent_mtime = || std::fs::metadata(tmp.path()).unwrap().modified().unwrap();
        let before = parent_mtime();

        let bad = init(&root, &["not a name".to_owned()], None).await;
        assert!(bad.is_err());
        assert_eq!(
            std::fs::read_dir(&root).unwrap().count(),
            0,
            "emptied again"
        );

        init(&root, &["localhost".to_owned()], None).await.unwrap();
        assert_eq!(
            parent_mtime(),
            before,
            "nothing made or renamed beside the data dir"
        );
        assert_eq!(mode(&root), 0o700);
        let dd = DataDir::new(&root);
        for path in dd.secret_files() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        assert!(Config::load(&dd.config()).is_ok());
        let stray: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
        // Once filled, it is refused like any other non-empty dir.
        assert!(init(&root, &[], None).await.is_err());
    }

    #[tokio::test]
    async fn init_makes_a_release_key_apart_from_the_command_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        init(&root, &["localhost".to_owned()], None).await.unwrap();
        let dd = DataDir::new(&root);
        assert_eq!(mode(&dd.release_key()), 0o600);
        assert_eq!(mode(&dd.release_pub()), 0o600);
        // The private key reads back as a release signer (PKCS#8 Ed25519).
        load_release_signer(&dd.release_key()).unwrap();
        assert!(
            read_to_string(&dd.release_pub())
                .unwrap()
                .contains("BEGIN PUBLIC KEY")
        );
        assert_pair(&dd);
        let command = TrustedKey::from_pem(&command_public_key(&dd).unwrap()).unwrap();
        assert_ne!(command.id, release_public_key(&dd).unwrap().id);
        dd.check().unwrap();
    }

    #[test]
    fn ensure_secrets_gives_an_old_data_dir_a_release_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path());
        ensure_secrets(&dd).unwrap();
        assert_eq!(mode(&dd.release_key()), 0o600);
        assert_pair(&dd);
        // Run again: the key stays the same.
        let before = read_to_string(&dd.release_key()).unwrap();
        ensure_secrets(&dd).unwrap();
        assert_eq!(read_to_string(&dd.release_key()).unwrap(), before);
        // A lost public half is derived again from the key.
        std::fs::remove_file(dd.release_pub()).unwrap();
        ensure_secrets(&dd).unwrap();
        assert_pair(&dd);
    }

    #[test]
    fn a_release_key_kept_offline_is_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path());
        ensure_secrets(&dd).unwrap();
        let offline = tmp.path().join("offline.key");
        std::fs::rename(dd.release_key(), &offline).unwrap();
        ensure_secrets(&dd).unwrap();
        assert!(!dd.release_key().exists(), "no new key made");
        let err = release_signer(&dd).unwrap_err();
        assert!(matches!(err, SetupError::ReleaseKeyAbsent(_)), "{err}");
        assert!(err.to_string().contains("offline"), "{err}");
        // Signing with the key file given explicitly.
        let signer = load_release_signer(&offline).unwrap();
        assert_eq!(signer.id(), release_public_key(&dd).unwrap().id);
        // Not a key: a clear error naming the file.
        let err = load_release_signer(&dd.release_pub()).unwrap_err();
        assert!(err.to_string().contains("release.pub"), "{err}");
    }
}

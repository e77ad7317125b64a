//! Operator actions shared by the CLI (and later the admin API): init, enrollment tokens,
//! revocation and the CRL.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use pifleet_shared::DeviceId;
use pifleet_shared::token::EnrollToken;
use rand::RngCore;

use crate::auth::Role;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::{self, Passwords};
use crate::config::{self, Config};
use crate::datadir::{DataDir, DataDirError, write_private};
use crate::enroll::secret_hash;
use crate::model::labels::{LabelError, Labels};
use crate::pki::{self, Ca, crl};
use crate::store::{RevokeOutcome, Store, StoreError, now_ms};

/// Errors of operator actions.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(
        "the device is revoked in the database, but its CRL could not be published: {0}; run the revocation again"
    )]
    Crl(#[from] crl::CrlError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("command key: {0}")]
    CommandKey(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no device {0}")]
    NoDevice(String),
    #[error(transparent)]
    Labels(#[from] LabelError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn read_to_string(path: &Path) -> Result<String, AdminError> {
    std::fs::read_to_string(path).map_err(|source| AdminError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Loads the CA from the data dir.
pub fn load_ca(dd: &DataDir) -> Result<Ca, AdminError> {
    Ok(Ca::from_pem(
        &read_to_string(&dd.ca_cert())?,
        &read_to_string(&dd.ca_key())?,
    )?)
}

/// The command public key (PEM) handed to devices.
pub fn command_public_key(dd: &DataDir) -> Result<String, AdminError> {
    read_to_string(&dd.command_pub())
}

/// Creates a new data dir: CA, server certificate, command key, config, database, CRL.
/// Everything is built in a sibling temp dir and renamed into place at the end, so a failure
/// leaves nothing half-written.
pub async fn init(root: &Path, hostnames: &[String]) -> Result<InitReport, AdminError> {
    let target = DataDir::new(root);
    target.create_new()?; // refuses an existing non-empty dir
    let parent = root.parent().unwrap_or(Path::new("."));
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    let staging = DataDir::new(parent.join(format!(".{name}.init-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(staging.root());
    staging.create_new()?;
    let report = match populate(&staging, hostnames).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(staging.root());
            return Err(e);
        }
    };
    std::fs::rename(staging.root(), root).map_err(|source| AdminError::Io {
        path: root.display().to_string(),
        source,
    })?;
    Ok(report)
}

/// What `init` made that the operator must see once.
#[derive(Debug)]
pub struct InitReport {
    /// Name of the first admin.
    pub admin_name: String,
    /// Their one-time password: shown once, changed at first sign-in.
    pub admin_password: String,
}

/// Name of the admin `init` creates.
pub const FIRST_ADMIN: &str = "admin";

async fn populate(dd: &DataDir, hostnames: &[String]) -> Result<InitReport, AdminError> {
    let label = hostnames
        .first()
        .map(String::as_str)
        .unwrap_or("controller");
    let ca = Ca::generate(label)?;
    write_private(&dd.ca_cert(), ca.cert_pem.as_bytes())?;
    write_private(&dd.ca_key(), ca.key_pem().as_bytes())?;
    let (cert, key) = ca.issue_server(hostnames)?;
    write_private(&dd.server_cert(), cert.as_bytes())?;
    write_private(&dd.server_key(), key.as_bytes())?;

    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    seed.fill(0);
    let key_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| AdminError::CommandKey(e.to_string()))?;
    let pub_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| AdminError::CommandKey(e.to_string()))?;
    write_private(&dd.command_key(), key_pem.as_bytes())?;
    write_private(&dd.command_pub(), pub_pem.as_bytes())?;

    JwtKeys::generate()
        .save(&dd.jwt_keys())
        .map_err(|e| AdminError::Invalid(format!("access-token key: {e}")))?;
    write_private(&dd.scrape_token(), new_scrape_token().as_bytes())?;

    write_private(&dd.config(), config::DEFAULT_TOML.as_bytes())?;
    let cfg = Config::parse(config::DEFAULT_TOML, &dd.config())?;
    let store = Store::open(&dd.database(), true).await?;
    crl::publish(dd, &store, &ca, cfg.pki.crl_next_update_days).await?;
    let passwords = Passwords::new(cfg.auth.argon2_cost())
        .map_err(|e| AdminError::Invalid(format!("password hashing: {e}")))?;
    let admin = create_user(
        &store,
        hash_with(&passwords),
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
        .ok_or_else(|| AdminError::Invalid("no one-time password was generated".into()))?;
    Ok(InitReport {
        admin_name: admin.name,
        admin_password,
    })
}

/// A fresh Prometheus scrape token (256 random bits).
pub fn new_scrape_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("pfs1.{}\n", pifleet_shared::token::to_hex(&b))
}

/// The scrape token from the data dir.
pub fn scrape_token(dd: &DataDir) -> Result<String, AdminError> {
    let t = read_to_string(&dd.scrape_token())?.trim().to_owned();
    if t.len() < 32 {
        return Err(AdminError::Invalid(format!(
            "{} holds no usable token; delete it and restart to make a new one",
            dd.scrape_token().display()
        )));
    }
    Ok(t)
}

/// A created enrollment token.
#[derive(Debug)]
pub struct CreatedToken {
    pub id: String,
    pub token: EnrollToken,
    pub expires_at_ms: i64,
}

/// Creates a single-use enrollment token.
pub async fn create_token(
    dd: &DataDir,
    store: &Store,
    max_ttl_s: u64,
    ttl: Duration,
    name: Option<&str>,
    labels: &Labels,
) -> Result<CreatedToken, AdminError> {
    if ttl.as_secs() < 1 || ttl.as_secs() > max_ttl_s {
        return Err(AdminError::Invalid(format!(
            "--ttl must be between 1s and {max_ttl_s}s (enrollment.max_token_ttl_s)"
        )));
    }
    let name = name
        .map(DeviceId::parse)
        .transpose()
        .map_err(|e| AdminError::Invalid(format!("--name: {e}")))?;
    let ca_fpr = pki::fingerprint_pem(&read_to_string(&dd.ca_cert())?)?;
    let fpr = pifleet_shared::token::from_hex::<32>(&ca_fpr)
        .ok_or_else(|| AdminError::Invalid("CA fingerprint is not hex".into()))?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let hash = secret_hash(&secret);
    let id = hash[..12].to_owned();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at_ms = now_ms().saturating_add(ttl_ms);
    store
        .insert_token(&id, &hash, name.as_ref(), labels, expires_at_ms)
        .await?;
    Ok(CreatedToken {
        id,
        token: EnrollToken::new(secret, fpr),
        expires_at_ms,
    })
}

/// Revokes a device: marks it and its certificates revoked, then publishes the CRL, which
/// a running controller reloads within `mqtt.crl_poll_ms`, dropping the device's
/// connection. Revoking an already revoked device publishes the CRL again, so a retry
/// repairs an earlier attempt whose CRL could not be written; the running controller also
/// enforces the database's revocations within `pki.crl_check_s` whatever the CRL says.
pub async fn revoke_device(
    dd: &DataDir,
    store: &Store,
    id: &str,
    crl_next_update_days: u32,
) -> Result<RevokeOutcome, AdminError> {
    let outcome = store.revoke_device(id).await?;
    if outcome == RevokeOutcome::Unknown {
        return Err(AdminError::NoDevice(id.to_owned()));
    }
    let ca = load_ca(dd)?;
    crl::publish(dd, store, &ca, crl_next_update_days).await?;
    Ok(outcome)
}

/// A created user; `one_time_password` is set when the password was generated (it is shown
/// once and must be changed at first sign-in).
#[derive(Debug)]
pub struct CreatedUser {
    pub id: i64,
    pub name: String,
    pub one_time_password: Option<String>,
}

/// User names: 1-64 of a-z 0-9 . _ - starting with a letter or digit.
pub fn validate_user_name(name: &str) -> Result<(), AdminError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "user name {name:?} must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )))
    }
}

/// Creates a user. With `password` None a one-time password is generated; a user created
/// with a generated password, or with `must_change`, must change it at first sign-in.
/// `hash` turns the password into its stored hash (the API bounds these argon2 runs, the
/// command line hashes directly: see [`hash_with`]).
pub async fn create_user<H, Fut>(
    store: &Store,
    hash: H,
    name: &str,
    role: Role,
    password: Option<&str>,
    must_change: bool,
) -> Result<CreatedUser, AdminError>
where
    H: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<String, AdminError>>,
{
    validate_user_name(name)?;
    let (password, generated) = match password {
        Some(p) => {
            password::check_policy(p, &[name, "pifleet"])
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            (p.to_owned(), false)
        }
        None => (password::one_time_password(), true),
    };
    let hash = hash(password.clone()).await?;
    let id = store
        .create_user(name, role, &hash, must_change || generated)
        .await?
        .map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(CreatedUser {
        id,
        name: name.to_owned(),
        one_time_password: generated.then_some(password),
    })
}

/// A `hash` for [`create_user`] that runs argon2 at once on this thread (command line).
pub fn hash_with(
    passwords: &Passwords,
) -> impl FnOnce(String) -> std::future::Ready<Result<String, AdminError>> + '_ {
    move |password| std::future::ready(hash_error(passwords.hash(&password)))
}

/// A hashing failure as an [`AdminError`].
pub fn hash_error<E: std::fmt::Display>(r: Result<String, E>) -> Result<String, AdminError> {
    r.map_err(|e| AdminError::Invalid(format!("cannot hash the password: {e}")))
}

//! An external MQTT broker in place of the built-in gateway (scale-out mode): the broker
//! configuration pifleet generates ([`mosquitto`]), the identities controllers present to
//! it ([`identity`]), and what closes the gaps a general broker leaves — a revocation that
//! reaches sessions already connected ([`revoke`]: the broker's CRL rewritten and reloaded,
//! then the live session kicked; [`sync`]: the same from the database on a broker's host
//! with no controller).
//!
//! Mosquitto 2 checks the CRL only at the TLS handshake and does not drop clients already
//! connected when it reloads it; it does not check SUBSCRIBE against its ACL file either (it
//! filters what it delivers). See `docs/SCALING.md`, "The broker: Mosquitto 2".

use std::path::{Path, PathBuf};

use pifleet_shared::DeviceId;

pub mod identity;
pub mod kick;
pub mod mosquitto;
pub mod revoke;
pub mod sync;
mod write;

pub use identity::{CONTROLLER_CN_PREFIX, ControllerName, controller_cn};
pub use kick::{ControllerClientConfig, kick};

/// Why the broker's files could not be generated or updated.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "{0} already holds a different configuration; give --force to replace it (the broker \
         must then be restarted or sent SIGHUP)"
    )]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not an absolute path (the broker's configuration names files absolutely)")]
    NotAbsolute(PathBuf),
    #[error("{path} cannot appear in the broker's configuration: {why}")]
    UnusablePath { path: PathBuf, why: &'static str },
    #[error("no such system user {0:?} to run the broker as")]
    NoUser(String),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(
        "{0} does not exist: run `pifleet-controller init` first, or the controller to publish its CRL"
    )]
    NoCrl(PathBuf),
    #[error("{path} is not a CRL the broker could load: {why}")]
    BadCrl { path: PathBuf, why: String },
    #[error("the CRL is refused: {0}")]
    Refused(#[from] sync::CrlRefusal),
    #[error("invalid controller name {name:?}: {source}")]
    Name {
        name: String,
        #[source]
        source: pifleet_shared::InvalidDeviceId,
    },
    #[error("no controller name given: the controller listener would admit no one")]
    NoControllers,
    #[error("the device listener and the controller listener are both {0}")]
    SameListener(std::net::SocketAddr),
    #[error("pid file {path}: {why}")]
    PidFile { path: PathBuf, why: String },
    #[error("signalling the broker (pid {pid}): {source}")]
    Signal {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("TLS set-up of the controller's client: {0}")]
    Tls(String),
    #[error("kicking {device} at the broker {broker}: {why}")]
    Kick {
        device: DeviceId,
        broker: String,
        why: String,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BrokerError + '_ {
    move |source| BrokerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `path` as the broker's configuration names it: absolute, one line, no whitespace
/// (Mosquitto reads the rest of the line as the value and trims it).
pub(crate) fn conf_path(path: &Path) -> Result<String, BrokerError> {
    if !path.is_absolute() {
        return Err(BrokerError::NotAbsolute(path.to_owned()));
    }
    let text = path.to_str().ok_or(BrokerError::UnusablePath {
        path: path.to_owned(),
        why: "it is not UTF-8",
    })?;
    if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BrokerError::UnusablePath {
            path: path.to_owned(),
            why: "it contains whitespace or control characters",
        });
    }
    Ok(text.to_owned())
}

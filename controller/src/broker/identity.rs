//! The identities controllers present to the broker: client certificates from the
//! controller's CA whose common name can never be a device id, so a controller cannot pose
//! as a device and no device certificate names a controller.
//!
//! The common name is [`CONTROLLER_CN_PREFIX`] followed by the controller's name. `#` is
//! no character of a device id (`[a-z0-9-]`), and it is a wildcard in MQTT: the topics the
//! device listener's `%u` patterns would give a controller certificate contain it, and no
//! PUBLISH can name such a topic, so there it can publish and receive nothing.

use std::path::{Path, PathBuf};

use pifleet_shared::DeviceId;

use super::write::{Owner, write_atomic};
use super::{BrokerError, io};
use crate::datadir::DataDir;
use crate::pki::Ca;

/// What every controller identity's common name starts with.
pub const CONTROLLER_CN_PREFIX: &str = "pifleet-controller#";

/// A controller's name: the rules of a device id (3–63 of `[a-z0-9-]`), so it is safe in
/// a file name and an ACL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerName(String);

impl ControllerName {
    pub fn parse(name: &str) -> Result<Self, BrokerError> {
        DeviceId::parse(name)
            .map(|id| Self(id.as_str().to_owned()))
            .map_err(|source| BrokerError::Name {
                name: name.to_owned(),
                source,
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The common name (and so the broker user name) of controller `name`.
pub fn controller_cn(name: &ControllerName) -> String {
    format!("{CONTROLLER_CN_PREFIX}{}", name.as_str())
}

/// Where an identity is written: `ca.crt`, `controller.crt`, `controller.key` (0600).
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IdentityFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("controller.crt"),
            key: dir.join("controller.key"),
        }
    }
}

/// A controller identity that was issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub files: IdentityFiles,
    pub common_name: String,
    pub serial: String,
}

/// Issues controller `name`'s client certificate from the data dir's CA into `out`
/// (created 0700 if missing): the CA certificate, the certificate and its key (0600,
/// written before the certificate). Refuses to replace an identity already there unless
/// `force`.
pub fn issue(
    dd: &DataDir,
    name: &ControllerName,
    out: &Path,
    force: bool,
) -> Result<Issued, BrokerError> {
    let files = IdentityFiles::in_dir(out);
    if !force && (files.cert.exists() || files.key.exists()) {
        return Err(BrokerError::Exists(files.cert));
    }
    let ca = Ca::load(dd)?;
    let cn = controller_cn(name);
    let (cert, key, serial) = ca.issue_client(&cn)?;
    pifleet_io::create_private_dir(out).map_err(|e| match e {
        pifleet_io::FileError::Io { path, source } => BrokerError::Io { path, source },
    })?;
    let ca_pem = std::fs::read(dd.ca_cert()).map_err(io(&dd.ca_cert()))?;
    let none: Owner = None;
    write_atomic(&files.key, key.as_bytes(), 0o600, none)?;
    write_atomic(&files.cert, cert.as_bytes(), 0o644, none)?;
    write_atomic(&files.ca, &ca_pem, 0o644, none)?;
    Ok(Issued {
        files,
        common_name: cn,
        serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_names_are_never_device_ids() {
        let name = ControllerName::parse("eu-1").unwrap();
        let cn = controller_cn(&name);
        assert_eq!(cn, "pifleet-controller#eu-1");
        assert!(DeviceId::parse(&cn).is_err());
        for bad in ["", "a", "Eu1", "a/b", "a#b", "a b", "-ab"] {
            assert!(ControllerName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_identity_is_issued_once_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        crate::setup::init(&root, &[], None).await.unwrap();
        let dd = DataDir::new(&root);
        let out = tmp.path().join("ctl");
        let name = ControllerName::parse("main").unwrap();
        let issued = issue(&dd, &name, &out, false).unwrap();
        assert_eq!(issued.common_name, "pifleet-controller#main");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.files.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The built-in gateway refuses it as a device.
        let der = pifleet_io::load_certs(&issued.files.cert).unwrap();
        assert!(crate::pki::device_identity(&der[0]).is_err());
        let before = std::fs::read(&issued.files.cert).unwrap();
        assert!(matches!(
            issue(&dd, &name, &out, false),
            Err(BrokerError::Exists(_))
        ));
        assert_eq!(std::fs::read(&issued.files.cert).unwrap(), before);
        issue(&dd, &name, &out, true).unwrap();
        assert_ne!(std::fs::read(&issued.files.cert).unwrap(), before);
    }
}

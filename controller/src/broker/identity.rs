//! The identities controllers present to the broker: client certificates from a CA of
//! their own (`controllers-ca.crt` in the data dir, made on first use), apart from the
//! devices' CA. The broker's controller listener trusts only that CA, so a device
//! certificate cannot even complete a handshake there (and so cannot take over another
//! device's session by its client id, which that listener allows for the kick); the device
//! listener trusts only the devices' CA, so a controller identity is refused there.
//!
//! Their common name can never be a device id either, so a controller cannot pose as a
//! device and no device certificate names a controller.
//! The common name is [`CONTROLLER_CN_PREFIX`] followed by the controller's name. `#` is
//! no character of a device id (`[a-z0-9-]`), and it is a wildcard in MQTT: the topics the
//! device listener's `%u` patterns would give a controller certificate contain it, and no
//! PUBLISH can name such a topic, so there it can publish and receive nothing.

use std::path::{Path, PathBuf};

use pifleet_shared::DeviceId;

use super::write::{Owner, write_atomic};
use super::{BrokerError, io};
use crate::datadir::{DataDir, write_private};
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

/// The controllers' CA of `dd`, made (key first, 0600 both) when it has none yet. Two
/// processes making it at once are serialized by a lock on the data dir's `crl.lock`, so
/// both end with the same CA.
pub fn controllers_ca(dd: &DataDir) -> Result<Ca, BrokerError> {
    let _lock = crate::datadir::lock_exclusive(&dd.crl_lock()).map_err(io(&dd.crl_lock()))?;
    let (cert, key) = (dd.controllers_ca_cert(), dd.controllers_ca_key());
    if !cert.exists() {
        let ca = Ca::generate("controllers")?;
        let write = |path: &Path, pem: &str| {
            write_private(path, pem.as_bytes()).map_err(|e| BrokerError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
        };
        write(&key, ca.key_pem())?;
        write(&cert, &ca.cert_pem)?;
        return Ok(ca);
    }
    let read = |path: &Path| std::fs::read_to_string(path).map_err(io(path));
    Ok(Ca::from_pem(&read(&cert)?, &read(&key)?)?)
}

/// Issues controller `name`'s client certificate from the controllers' CA into `out`
/// (created 0700 if missing): the devices' CA certificate (which the broker's server
/// certificate comes from), the certificate and its key (0600, written before the
/// certificate). Refuses to replace an identity already there unless `force`.
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
    let ca = controllers_ca(dd)?;
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
        // It comes from the controllers' CA, not the devices': the devices' CA does not
        // verify it, the controllers' CA does.
        let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        let key_of = |pem_path: &Path| {
            let der = pifleet_io::load_certs(pem_path).unwrap();
            let (_, c) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
            c.public_key().raw.to_vec()
        };
        let verifies = |ca: &Path| {
            let ca_der = pifleet_io::load_certs(ca).unwrap();
            let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der[0]).unwrap();
            cert.verify_signature(Some(ca_cert.public_key())).is_ok()
        };
        assert!(!verifies(&dd.ca_cert()));
        assert!(verifies(&dd.controllers_ca_cert()));
        assert_ne!(key_of(&dd.ca_cert()), key_of(&dd.controllers_ca_cert()));
        // The identity's ca.crt is the devices' CA: what the broker's certificate is from.
        assert_eq!(
            std::fs::read(&issued.files.ca).unwrap(),
            std::fs::read(dd.ca_cert()).unwrap()
        );
        let ca_mode = std::fs::metadata(dd.controllers_ca_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(ca_mode & 0o777, 0o600);
        let before = std::fs::read(&issued.files.cert).unwrap();
        assert!(matches!(
            issue(&dd, &name, &out, false),
            Err(BrokerError::Exists(_))
        ));
        assert_eq!(std::fs::read(&issued.files.cert).unwrap(), before);
        issue(&dd, &name, &out, true).unwrap();
        assert_ne!(std::fs::read(&issued.files.cert).unwrap(), before);
        // The controllers' CA is made once and kept.
        let ca = std::fs::read(dd.controllers_ca_cert()).unwrap();
        issue(
            &dd,
            &ControllerName::parse("other").unwrap(),
            &tmp.path().join("o"),
            false,
        )
        .unwrap();
        assert_eq!(std::fs::read(dd.controllers_ca_cert()).unwrap(), ca);
    }
}

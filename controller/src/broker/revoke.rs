//! A revocation that reaches the broker: its `crlfile` rewritten from the data dir's CRL
//! (atomically, keeping the mode and owner it was generated with) and the broker told to
//! reload it, then the device's live session ended.
//!
//! Mosquitto 2.0.11 re-reads `crlfile` when it receives SIGHUP (its reload also re-reads
//! the ACL files and the server certificate): handshakes after the signal are checked
//! against the new CRL. It does not look at clients already connected, hence the kick.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pifleet_shared::DeviceId;

use super::kick::{ControllerClientConfig, kick};
use super::mosquitto::BrokerDir;
use super::write::replace_keeping_owner;
use super::{BrokerError, io};
use crate::datadir::DataDir;

/// How to find the running broker.
#[derive(Debug, Clone)]
pub enum BrokerProcess {
    /// Its pid file (`pid_file` of the generated configuration).
    PidFile(PathBuf),
    Pid(i32),
}

impl BrokerProcess {
    /// The broker's pid.
    pub fn pid(&self) -> Result<i32, BrokerError> {
        match self {
            Self::Pid(pid) => Ok(*pid),
            Self::PidFile(path) => {
                let text = std::fs::read_to_string(path).map_err(io(path))?;
                let pid = text
                    .trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 1)
                    .ok_or_else(|| BrokerError::PidFile {
                        path: path.clone(),
                        why: format!("{:?} is not a process id", text.trim()),
                    })?;
                Ok(pid)
            }
        }
    }
}

/// Copies the data dir's CRL over the broker's `crl.pem`, atomically. The CRL is public;
/// a new file is 0644.
pub fn sync_crl(dd: &DataDir, broker: &BrokerDir) -> Result<(), BrokerError> {
    sync_crl_from(&dd.crl(), broker)
}

/// Copies the CRL at `src` (the data dir's, or a copy of it on the broker's host) over the
/// broker's `crl.pem`, atomically, after checking it parses as PEM CRLs: a file the broker
/// could not load would fail every handshake after the reload.
pub fn sync_crl_from(src: &Path, broker: &BrokerDir) -> Result<(), BrokerError> {
    let crl = std::fs::read(src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BrokerError::NoCrl(src.to_owned()),
        _ => io(src)(e),
    })?;
    let parsed = pifleet_io::load_crls(src).map_err(|e| BrokerError::BadCrl {
        path: src.to_owned(),
        why: e.to_string(),
    })?;
    if parsed.is_empty() {
        return Err(BrokerError::BadCrl {
            path: src.to_owned(),
            why: "no CRL in it".to_owned(),
        });
    }
    crate::pki::tls::revoked_serials(&parsed).map_err(|e| BrokerError::BadCrl {
        path: src.to_owned(),
        why: e.to_string(),
    })?;
    replace_keeping_owner(&broker.crl(), &crl, 0o644)
}

/// Sends SIGHUP to the broker: Mosquitto reloads its configuration, its ACL files, its
/// server certificate and its CRL.
pub fn reload(process: &BrokerProcess) -> Result<i32, BrokerError> {
    let pid = process.pid()?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|source| BrokerError::Signal { pid, source })?;
    Ok(pid)
}

/// After `device` was revoked in the data dir (its CRL published): the broker's CRL
/// rewritten and reloaded, so its next handshake is refused, then its live session kicked
/// through the controller listener. The reload comes first, so a device that reconnects at
/// once after the kick meets the new CRL; `settle` is how long the broker is given to
/// reload before the kick.
pub async fn enforce(
    dd: &DataDir,
    broker: &BrokerDir,
    process: &BrokerProcess,
    client: &ControllerClientConfig,
    device: &DeviceId,
    settle: Duration,
) -> Result<(), BrokerError> {
    let (dd, broker, process) = (dd.clone(), broker.clone(), process.clone());
    // File I/O and a signal: off the executor.
    tokio::task::spawn_blocking(move || {
        sync_crl(&dd, &broker)?;
        reload(&process)
    })
    .await
    .map_err(|e| BrokerError::Io {
        path: PathBuf::from("crl.pem"),
        source: std::io::Error::other(e),
    })??;
    tokio::time::sleep(settle).await;
    kick(client, device).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn the_crl_is_replaced_keeping_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        crate::setup::init(&root, &[], None).await.unwrap();
        let dd = DataDir::new(&root);
        let broker = BrokerDir::new(tmp.path());
        // Missing: written, public.
        sync_crl(&dd, &broker).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&broker.crl()), 0o644);
        assert_eq!(
            std::fs::read(broker.crl()).unwrap(),
            std::fs::read(dd.crl()).unwrap()
        );
        // Present with another mode: the content changes, the mode stays.
        std::fs::write(broker.crl(), b"old").unwrap();
        std::fs::set_permissions(broker.crl(), std::fs::Permissions::from_mode(0o640)).unwrap();
        sync_crl(&dd, &broker).unwrap();
        assert_eq!(mode(&broker.crl()), 0o640);
        assert_eq!(
            std::fs::read(broker.crl()).unwrap(),
            std::fs::read(dd.crl()).unwrap()
        );
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
            "{names:?}"
        );
    }

    #[test]
    fn a_bad_pid_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pid");
        for text in ["", "abc", "0", "1", "-5"] {
            std::fs::write(&path, text).unwrap();
            let err = BrokerProcess::PidFile(path.clone()).pid().unwrap_err();
            assert!(
                matches!(err, BrokerError::PidFile { .. }),
                "{text:?}: {err}"
            );
        }
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(BrokerProcess::PidFile(path.clone()).pid().unwrap(), 4242);
        let missing = BrokerProcess::PidFile(tmp.path().join("none")).pid();
        assert!(matches!(missing, Err(BrokerError::Io { .. })));
    }

    #[test]
    fn what_is_not_a_crl_is_not_installed() {
        let tmp = tempfile::tempdir().unwrap();
        let broker = BrokerDir::new(tmp.path());
        std::fs::write(broker.crl(), b"kept").unwrap();
        let src = tmp.path().join("src.pem");
        for text in [
            "",
            "garbage",
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        ] {
            std::fs::write(&src, text).unwrap();
            let err = sync_crl_from(&src, &broker).unwrap_err();
            assert!(matches!(err, BrokerError::BadCrl { .. }), "{text:?}: {err}");
        }
        assert_eq!(std::fs::read(broker.crl()).unwrap(), b"kept");
        let missing = sync_crl_from(&tmp.path().join("none"), &broker);
        assert!(matches!(missing, Err(BrokerError::NoCrl(_))));
    }
}

//! The Mosquitto configuration a careful user would write for the same fleet: client
//! certificates required and used as the user name, the controller's CA and CRL, no
//! anonymous access, pattern ACLs confining each device to its own topics, and no
//! connection cap.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pifleet_controller::datadir::DataDir;

/// Writes `mosquitto.conf` (and the files it names) into `dir` for a TLS listener on
/// 127.0.0.1:`port`; returns the config's path.
pub fn write_config(dd: &DataDir, dir: &Path, port: u16) -> Result<PathBuf> {
    let copy = |from: PathBuf, name: &str| -> Result<String> {
        let to = dir.join(name);
        std::fs::copy(&from, &to).with_context(|| format!("reading {}", from.display()))?;
        Ok(to.display().to_string())
    };
    let ca = copy(dd.ca_cert(), "ca.crt")?;
    let cert = copy(dd.server_cert(), "server.crt")?;
    let key = copy(dd.server_key(), "server.key")?;
    // Mosquitto 2.0.11 reads a PEM CRL per listener; a revoked device is refused at its
    // next handshake (only then: Mosquitto does not re-read it while running).
    let crl = if dd.crl().is_file() {
        format!("crlfile {}\n", copy(dd.crl(), "crl.pem")?)
    } else {
        String::new()
    };
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "pattern write fleet/%u/up/#\npattern read fleet/%u/down/#\n",
    )?;
    let is_root = nix::unistd::Uid::effective().is_root();
    let conf = format!(
        "{user}per_listener_settings false\n\
         log_dest stderr\nlog_type error\nlog_type warning\n\
         persistence false\n\
         allow_anonymous false\n\
         acl_file {acl}\n\
         max_inflight_messages 20\n\
         max_queued_messages 1000\n\
         listener {port} 127.0.0.1\n\
         max_connections -1\n\
         cafile {ca}\ncertfile {cert}\nkeyfile {key}\n{crl}\
         require_certificate true\nuse_identity_as_username true\n",
        user = if is_root { "user root\n" } else { "" },
        acl = acl.display(),
    );
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

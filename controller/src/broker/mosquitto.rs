//! `pifleet-controller broker-config mosquitto`: everything Debian's Mosquitto 2 (2.0.11)
//! needs to stand in for the built-in gateway, generated from a controller data dir.
//!
//! One broker, two listeners (`per_listener_settings true`):
//! - the device listener: client certificates from the controller's CA required, checked
//!   against its CRL, the certificate's CN as the user name and the client id, pattern ACLs
//!   confining each device to `fleet/<own id>/up/#` (write) and `fleet/<own id>/down/#`
//!   (read) — the rules of `pifleet_shared::topic`;
//! - the controller listener: client certificates from the controllers' CA only (see
//!   [`super::identity`]), so a device certificate fails the handshake there; only the user
//!   names of the controller identities named at generation have ACL entries (reading every
//!   device's `up`, also through the shared subscription `$share/pifleet/...`, writing
//!   every device's `down`): leaving a name out (generating again with `--force`, then
//!   SIGHUP) withdraws that identity. Client ids are not tied to the user name there, so a
//!   controller can take over a device's session to end it (see [`super::kick`]).
//!
//! The files (`mosquitto.conf`, `acl-devices`, `acl-controllers`, `ca.crt`,
//! `controllers-ca.crt`, `crl.pem`, and the broker's own `server.crt`/`server.key` issued by
//! the devices' CA) go into one directory; the configuration names them by absolute path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::identity::{ControllerName, controller_cn};
use super::write::{Owner, write_atomic};
use super::{BrokerError, conf_path, io};
use crate::datadir::DataDir;
use crate::pki::Ca;

/// Largest number of QoS 1 messages in flight to one client at once.
pub const MAX_INFLIGHT: u32 = 20;
/// Largest number of QoS 1 messages queued for one client beyond those in flight: a device
/// offline this long has its oldest downlinks dropped (commands are re-sent from the
/// controller's outbox; nothing a device needs lives only in the broker).
pub const MAX_QUEUED: u32 = 1000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where devices connect (TLS).
    pub device_listen: SocketAddr,
    /// Where controllers connect (TLS); keep it off the devices' network.
    pub controller_listen: SocketAddr,
    /// Names devices and controllers reach the broker by, for its server certificate
    /// (localhost, 127.0.0.1 and ::1 are always included).
    pub hostnames: Vec<String>,
    /// The controllers allowed on the controller listener.
    pub controllers: Vec<ControllerName>,
    /// The system user Mosquitto runs as after start-up (`user`); the files it re-reads on
    /// SIGHUP are made readable to it.
    pub run_as: String,
    /// Replace a different configuration already in the directory.
    pub force: bool,
}

/// The files written.
#[derive(Debug, Clone)]
pub struct Generated {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub crl: PathBuf,
    pub pid_file: PathBuf,
    /// False when an identical configuration was already there (nothing was rewritten).
    pub written: bool,
}

/// Paths inside a broker directory.
#[derive(Debug, Clone)]
pub struct BrokerDir {
    root: PathBuf,
}

impl BrokerDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn conf(&self) -> PathBuf {
        self.root.join("mosquitto.conf")
    }
    pub fn ca(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    /// The CA the controller listener checks client certificates against.
    pub fn controllers_ca(&self) -> PathBuf {
        self.root.join("controllers-ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn crl(&self) -> PathBuf {
        self.root.join("crl.pem")
    }
    pub fn acl_devices(&self) -> PathBuf {
        self.root.join("acl-devices")
    }
    pub fn acl_controllers(&self) -> PathBuf {
        self.root.join("acl-controllers")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("mosquitto.pid")
    }
}

/// The device listener's ACL: each device writes only its own `up` topics and reads only its
/// own `down` topics (`%u` is the certificate's CN).
pub fn device_acl() -> String {
    "# Devices: each one publishes only under fleet/<its id>/up/ and receives only\n\
     # fleet/<its id>/down/ (%u = the CN of its certificate = its device id).\n\
     pattern write fleet/%u/up/#\n\
     pattern read fleet/%u/down/#\n"
        .to_owned()
}

/// The controller listener's ACL: the named controllers read every device's `up` topics
/// (directly or through the `pifleet` share group) and write every device's `down` topics;
/// any other user (a device certificate) has no entry, so nothing.
pub fn controller_acl(controllers: &[ControllerName]) -> String {
    let mut acl = String::from(
        "# Controllers only: a user name not listed here (a device certificate) may publish\n\
         # and receive nothing on this listener.\n\
         # Mosquitto 2.0 checks what it delivers against the message's topic (fleet/+/up/#\n\
         # here), not the SUBSCRIBE: the $share line is for brokers that check SUBSCRIBE.\n",
    );
    for name in controllers {
        acl.push_str(&format!(
            "user {}\n\
             topic read $share/pifleet/fleet/+/up/#\n\
             topic read fleet/+/up/#\n\
             topic write fleet/+/down/#\n",
            controller_cn(name)
        ));
    }
    acl
}

/// `listener PORT ADDRESS`.
fn listener(addr: SocketAddr) -> String {
    format!("listener {} {}", addr.port(), addr.ip())
}

/// The configuration for the files of `dir` (absolute); `data_crl` is the controller's CRL
/// its comments tell to copy.
pub fn config(dir: &BrokerDir, opts: &Options, data_crl: &Path) -> Result<String, BrokerError> {
    let p = |path: PathBuf| conf_path(&path);
    let (ca, cert, key, crl) = (p(dir.ca())?, p(dir.cert())?, p(dir.key())?, p(dir.crl())?);
    let controllers_ca = p(dir.controllers_ca())?;
    let tls = |cafile: &str, crl: Option<&str>| {
        format!(
            "cafile {cafile}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             {crl}\
             tls_version tlsv1.2\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             allow_anonymous false\n",
            crl = crl.map(|c| format!("crlfile {c}\n")).unwrap_or_default()
        )
    };
    // The devices' CRL is signed by their CA; the controller listener trusts another CA,
    // whose identities are withdrawn by leaving their names out of its ACL.
    let device_tls = tls(&ca, Some(&crl));
    let controller_tls = tls(&controllers_ca, None);
    let conf = p(dir.conf())?;
    Ok(format!(
        "# Mosquitto 2 configuration for pifleet, generated by\n\
         #   pifleet-controller broker-config mosquitto --out {root}\n\
         # Do not edit: generate it again (with --force) instead.\n\
         #\n\
         # Run it with Debian's mosquitto package, e.g. a systemd drop-in\n\
         # /etc/systemd/system/mosquitto.service.d/pifleet.conf:\n\
         #   [Service]\n\
         #   ExecStart=\n\
         #   ExecStart=/usr/sbin/mosquitto -c {conf}\n\
         # then `systemctl daemon-reload && systemctl restart mosquitto`; or by hand:\n\
         #   mosquitto -c {conf}\n\
         # Revocations reach it from the fleet's database: run\n\
         #   pifleet-controller broker-sync --broker-dir {root} ...\n\
         # beside it (deploy/systemd/pifleet-broker-sync.service): it installs each new CRL\n\
         # over crl.pem, sends SIGHUP to the pid in {pid} (Mosquitto re-reads the\n\
         # CRL for new handshakes) and ends the revoked devices' live sessions. By hand:\n\
         #   pifleet-controller broker-config sync-crl --crl {data_crl} --out {root}\n\
         # See docs/SCALING.md, \"The broker: Mosquitto 2\".\n\
         \n\
         # Each listener has its own ACL file and authentication settings.\n\
         per_listener_settings true\n\
         # Start as root (to bind and read the key), then run as this user.\n\
         user {user}\n\
         pid_file {pid}\n\
         # Nothing survives a broker restart: devices keep unacknowledged samples in their\n\
         # spool and controllers re-send commands from their outbox.\n\
         persistence false\n\
         # The controller's largest accepted MQTT packet.\n\
         max_packet_size {max_packet}\n\
         max_inflight_messages {MAX_INFLIGHT}\n\
         max_queued_messages {MAX_QUEUED}\n\
         \n\
         # Devices: mutual TLS, the certificate's CN is the user name and the client id.\n\
         {device_listener}\n\
         {device_tls}\
         use_username_as_clientid true\n\
         acl_file {acl_devices}\n\
         \n\
         # Controllers only: identities from the controllers' own CA (made by\n\
         # `pifleet-controller broker-config controller-identity`); a device certificate\n\
         # fails the handshake here.\n\
         {controller_listener}\n\
         {controller_tls}\
         acl_file {acl_controllers}\n",
        root = conf_path(dir.root())?,
        // Only a path that is one clean word goes into the comment.
        data_crl = conf_path(data_crl).unwrap_or_else(|_| "DATA_DIR/crl.pem".to_owned()),
        user = opts.run_as,
        pid = p(dir.pid_file())?,
        max_packet = crate::mqtt::max_packet_size(),
        device_listener = listener(opts.device_listen),
        controller_listener = listener(opts.controller_listen),
        acl_devices = p(dir.acl_devices())?,
        acl_controllers = p(dir.acl_controllers())?,
    ))
}

/// Generates the broker's files into `out` (created if missing). An identical existing
/// configuration is left as it is; a different one is replaced only with `opts.force`.
/// The configuration is written last, so an interrupted run leaves no configuration naming
/// files that are missing.
pub fn generate(dd: &DataDir, out: &Path, opts: &Options) -> Result<Generated, BrokerError> {
    if opts.controllers.is_empty() {
        return Err(BrokerError::NoControllers);
    }
    if opts.device_listen == opts.controller_listen {
        return Err(BrokerError::SameListener(opts.device_listen));
    }
    if !is_valid_user(&opts.run_as) {
        return Err(BrokerError::NoUser(opts.run_as.clone()));
    }
    let key_owner = key_owner(&opts.run_as)?;
    let absolute = if out.is_absolute() {
        out.to_owned()
    } else {
        std::env::current_dir().map_err(io(out))?.join(out)
    };
    conf_path(&absolute)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let root = std::fs::canonicalize(out).map_err(io(out))?;
    let dir = BrokerDir::new(&root);
    let data_crl = std::fs::canonicalize(dd.crl()).unwrap_or_else(|_| dd.crl());
    let conf = config(&dir, opts, &data_crl)?;
    let generated = Generated {
        dir: root.clone(),
        conf: dir.conf(),
        crl: dir.crl(),
        pid_file: dir.pid_file(),
        written: true,
    };
    match std::fs::read_to_string(dir.conf()) {
        Ok(existing) if existing == conf => {
            if !opts.force && complete(&dir) {
                return Ok(Generated {
                    written: false,
                    ..generated
                });
            }
        }
        Ok(_) if !opts.force => return Err(BrokerError::Exists(dir.conf())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&dir.conf())(e)),
    }
    let crl = std::fs::read(dd.crl()).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BrokerError::NoCrl(dd.crl()),
        _ => io(&dd.crl())(e),
    })?;
    let ca_pem = std::fs::read(dd.ca_cert()).map_err(io(&dd.ca_cert()))?;
    let ca = Ca::load(dd)?;
    let (cert, key) = ca.issue_server(&opts.hostnames)?;
    let controllers_ca = super::identity::controllers_ca(dd)?;
    let public: Owner = None;
    write_atomic(&dir.key(), key.as_bytes(), 0o600, key_owner)?;
    write_atomic(&dir.cert(), cert.as_bytes(), 0o644, public)?;
    write_atomic(&dir.ca(), &ca_pem, 0o644, public)?;
    write_atomic(
        &dir.controllers_ca(),
        controllers_ca.cert_pem.as_bytes(),
        0o644,
        public,
    )?;
    write_atomic(&dir.crl(), &crl, 0o644, public)?;
    write_atomic(&dir.acl_devices(), device_acl().as_bytes(), 0o644, public)?;
    let acl = controller_acl(&opts.controllers);
    write_atomic(&dir.acl_controllers(), acl.as_bytes(), 0o644, public)?;
    write_atomic(&dir.conf(), conf.as_bytes(), 0o644, public)?;
    Ok(generated)
}

/// Whether every file the configuration names is there.
fn complete(dir: &BrokerDir) -> bool {
    [
        dir.ca(),
        dir.controllers_ca(),
        dir.cert(),
        dir.key(),
        dir.crl(),
        dir.acl_devices(),
        dir.acl_controllers(),
    ]
    .iter()
    .all(|p| p.is_file())
}

/// A plausible system user name (it goes into the configuration as one word).
fn is_valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Who the broker's key must belong to: `user` when this runs as root (Mosquitto re-reads
/// the key as that user on SIGHUP), else whoever runs this (and the broker).
fn key_owner(user: &str) -> Result<Owner, BrokerError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        Ok(None) => Err(BrokerError::NoUser(user.to_owned())),
        Err(e) => Err(BrokerError::Io {
            path: PathBuf::from("/etc/passwd"),
            source: e.into(),
        }),
    }
}

#[cfg(test)]
#[path = "mosquitto_tests.rs"]
mod tests;

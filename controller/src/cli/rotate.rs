//! `pifleet-controller rotate …`: replacing keys and the server certificate without
//! re-enrolling anything. The running controller picks new files up within
//! `auth.key_reload_s`.

use clap::Subcommand;
use pifleet_controller::auth::jwt::JwtKeys;
use pifleet_controller::pki::server_cert;
use pifleet_controller::rotation::{command_keys, keyset, release_key};
use pifleet_controller::store::now_ms;

use super::{DataDirArg, Opened, conclude, open};

#[derive(Subcommand)]
pub enum RotateCmd {
    /// Replace the issuing CA with a new intermediate from the same root (the controller
    /// stopped): devices keep working with the certificates they hold and move to the new
    /// CA as they renew; `--finish` then stops trusting the previous one.
    Ca {
        #[command(flatten)]
        dir: DataDirArg,
        /// The new intermediate CA's certificate followed by its chain up to the root.
        #[arg(long, requires = "ca_key", conflicts_with = "finish")]
        ca_cert: Option<std::path::PathBuf>,
        /// The new intermediate CA's private key.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<std::path::PathBuf>,
        /// End the rotation: refused while devices still hold only certificates of the
        /// previous CA (listed), unless --force.
        #[arg(long, required_unless_present = "ca_cert")]
        finish: bool,
        /// With --finish: lock those devices out anyway.
        #[arg(long, requires = "finish")]
        force: bool,
    },
    /// A new key signs admin access tokens from now on; the previous one keeps verifying
    /// the tokens it signed until they expire (`auth.access_ttl_s`), so nobody is signed out.
    JwtKey {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// A new server certificate from the CA, served to new connections without a restart;
    /// connected agents stay connected (they pin the CA, not the certificate).
    ServerCert {
        #[command(flatten)]
        dir: DataDirArg,
        /// DNS name or IP address the certificate is for (repeatable); default: the names
        /// of the certificate in use.
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
    },
    /// A new command-signing key, announced to devices signed by the previous one. The
    /// previous key keeps signing commands for devices that have not confirmed the new one
    /// until the overlap ends or `--finish`.
    CommandKey {
        #[command(flatten)]
        dir: DataDirArg,
        /// How long the previous key keeps signing, in seconds.
        #[arg(long, default_value_t = 7 * 24 * 3600, value_parser = clap::value_parser!(u32).range(1..))]
        overlap_s: u32,
        /// End the overlap now: only the newest key signs, and devices are told to trust it
        /// alone.
        #[arg(long, conflicts_with = "overlap_s")]
        finish: bool,
    },
    /// The command keys and release keys, and the devices that have not confirmed the
    /// newest.
    Status {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// A new release-signing key: new releases are signed with it at once, and devices are
    /// told to trust it next to the previous one, so releases signed by either deploy.
    ReleaseKey {
        #[command(flatten)]
        dir: DataDirArg,
        /// End the overlap: devices are told to trust the newest key only.
        #[arg(long)]
        finish: bool,
    },
    /// Record this data dir's key files as the ones every controller sharing the database
    /// must hold (rotations record them by themselves): controllers whose files differ
    /// report themselves not ready until they hold the same.
    AdoptKeys {
        #[command(flatten)]
        dir: DataDirArg,
    },
}

/// After a rotation changed key files: records them as the fleet's, so the other
/// controllers sharing the database report themselves not ready until they hold them too.
/// The rotation is done either way; a failure here is said, with what to run.
async fn record_keys<T, E>(o: &Opened, rotated: &Result<T, E>) {
    if rotated.is_err() {
        return;
    }
    if let Err(e) = keyset::record(&o.dd, &o.store).await {
        eprintln!(
            "warning: the keys changed but the database's record of them could not be \
             updated ({e}); run `pifleet-controller rotate adopt-keys` here"
        );
    }
}

/// Longest an MFA-step token lives (`api::auth`): older keys stay for whichever is longer.
const MFA_TOKEN_TTL_S: i64 = 300;

pub async fn run(cmd: RotateCmd) -> anyhow::Result<()> {
    match cmd {
        RotateCmd::Ca {
            dir,
            ca_cert,
            ca_key,
            finish,
            force,
        } => rotate_ca(&dir, ca_cert.zip(ca_key), finish, force).await?,
        RotateCmd::JwtKey { dir } => {
            let o = open(&dir).await?;
            let path = o.dd.jwt_keys();
            let rotated = JwtKeys::load(&path).and_then(|mut keys| {
                // A minute of margin for clocks and requests in flight.
                let max_age = o.cfg.auth.access_ttl_s.max(MFA_TOKEN_TTL_S) + 60;
                keys.rotate_at(now_ms() / 1000, max_age);
                keys.save(&path)?;
                Ok(keys)
            });
            let detail = match &rotated {
                Ok(k) => format!("new key {}", k.current_kid()),
                Err(_) => String::new(),
            };
            record_keys(&o, &rotated).await;
            let keys = conclude(o.store, "rotate.jwt_key", "jwt.key", &detail, rotated).await?;
            println!(
                "access tokens are now signed with key {}; the previous key verifies the tokens \
                 it signed until they expire. A running controller uses it within \
                 auth.key_reload_s.",
                keys.current_kid()
            );
        }
        RotateCmd::ServerCert { dir, hostnames } => {
            let o = open(&dir).await?;
            let issued = server_cert::rotate(&o.dd, &hostnames);
            let detail = match &issued {
                Ok(i) => format!("serial {} for {}", i.serial, i.hostnames.join(", ")),
                Err(_) => String::new(),
            };
            let issued =
                conclude(o.store, "rotate.server_cert", "server.crt", &detail, issued).await?;
            println!(
                "new server certificate {} for {}, valid until {} (Unix time). A running \
                 controller serves it to new connections within auth.key_reload_s.",
                issued.serial,
                issued.hostnames.join(", "),
                issued.not_after
            );
        }
        RotateCmd::CommandKey {
            dir,
            overlap_s,
            finish: false,
        } => {
            let o = open(&dir).await?;
            let rotated = command_keys::rotate(&o.dd, &o.store, i64::from(overlap_s) * 1000).await;
            let detail = match &rotated {
                Ok(r) => format!(
                    "new key {}; key {} signs until {} (Unix ms)",
                    r.new, r.previous, r.retire_at
                ),
                Err(_) => String::new(),
            };
            record_keys(&o, &rotated).await;
            let r = conclude(
                o.store,
                "rotate.command_key",
                "command.key",
                &detail,
                rotated,
            )
            .await?;
            println!(
                "commands are signed with key {} once devices confirm it (a running controller \
                 announces it within auth.key_reload_s); key {} signs for the others for \
                 {overlap_s} s. `rotate status` lists who has not confirmed.",
                r.new, r.previous
            );
        }
        RotateCmd::CommandKey {
            dir, finish: true, ..
        } => {
            let o = open(&dir).await?;
            let finished = command_keys::finish(&o.dd, &o.store).await;
            let detail = match &finished {
                Ok(ids) => format!("stopped {}", ids.join(", ")),
                Err(_) => String::new(),
            };
            record_keys(&o, &finished).await;
            let ids = conclude(
                o.store,
                "rotate.command_key_finish",
                "command.key",
                &detail,
                finished,
            )
            .await?;
            println!(
                "command keys {} no longer sign; devices are told to trust the newest only.",
                ids.join(", ")
            );
        }
        RotateCmd::Status { dir } => {
            let o = open(&dir).await?;
            let (keys, pending) = command_keys::status(&o.dd, &o.store).await?;
            let now = pifleet_controller::store::now_ms();
            println!("command keys (newest first):");
            for (i, k) in keys.iter().enumerate() {
                let state = match k.retire_at {
                    _ if i == 0 => "signing".to_owned(),
                    Some(t) if t > now => format!("signing until {t}"),
                    _ => "retired".to_owned(),
                };
                println!("  {}\tcreated {}\t{state}", k.key_id, k.created_at);
            }
            if let Some(newest) = keys.first() {
                println!(
                    "devices that have not confirmed command key {}: {}",
                    newest.key_id,
                    list(&pending)
                );
            }
            let release = pifleet_controller::setup::release_public_keys(&o.dd)?;
            let ids: Vec<String> = release.iter().map(|k| k.id.to_string()).collect();
            let pending = o.store.devices_to_announce(&ids).await?;
            println!("release keys trusted: {}", ids.join(", "));
            println!(
                "devices that have not confirmed them and are not being told: {}",
                list(&pending)
            );
            o.store.close().await;
        }
        RotateCmd::ReleaseKey { dir, finish: false } => {
            let o = open(&dir).await?;
            let rotated = release_key::rotate(&o.dd);
            let detail = match &rotated {
                Ok((new, all)) => format!("new key {}; trusted {}", new.id, ids(all)),
                Err(_) => String::new(),
            };
            record_keys(&o, &rotated).await;
            let (new, all) = conclude(
                o.store,
                "rotate.release_key",
                "release.key",
                &detail,
                rotated,
            )
            .await?;
            println!(
                "new releases are signed with key {}; devices are told to trust {} (a running \
                 controller within auth.key_reload_s). End the overlap with `rotate \
                 release-key --finish`.",
                new.id,
                ids(&all)
            );
        }
        RotateCmd::ReleaseKey { dir, finish: true } => {
            let o = open(&dir).await?;
            let finished = match release_key::finish(&o.dd) {
                // Every device is told the remaining key again, and so drops the others.
                Ok(dropped) => o
                    .store
                    .forget_release_key_acks()
                    .await
                    .map(|_| dropped)
                    .map_err(anyhow::Error::from),
                Err(e) => Err(e.into()),
            };
            let detail = match &finished {
                Ok(dropped) => format!("dropped {}", ids(dropped)),
                Err(_) => String::new(),
            };
            record_keys(&o, &finished).await;
            let dropped = conclude(
                o.store,
                "rotate.release_key_finish",
                "release.key",
                &detail,
                finished,
            )
            .await?;
            println!(
                "release keys {} are no longer trusted; devices are told within \
                 auth.key_reload_s.",
                ids(&dropped)
            );
        }
        RotateCmd::AdoptKeys { dir } => {
            let o = open(&dir).await?;
            let recorded = keyset::record(&o.dd, &o.store).await;
            conclude(o.store, "rotate.adopt_keys", "keys", "", recorded).await?;
            println!(
                "this data dir's key files are now the fleet's: controllers sharing the \
                 database whose files differ report themselves not ready (within \
                 auth.key_reload_s) until they hold the same."
            );
        }
    }
    Ok(())
}

fn list(devices: &[String]) -> String {
    if devices.is_empty() {
        "none".to_owned()
    } else {
        devices.join(", ")
    }
}

fn ids(keys: &[pifleet_shared::signing::TrustedKey]) -> String {
    keys.iter()
        .map(|k| k.id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rotate ca`: refused while a controller serves the data dir (it holds the CA it started
/// with).
async fn rotate_ca(
    dir: &DataDirArg,
    new: Option<(std::path::PathBuf, std::path::PathBuf)>,
    finish: bool,
    force: bool,
) -> anyhow::Result<()> {
    use pifleet_controller::pki::rotate_ca;
    let o = open(dir).await?;
    if let Some(pid) = serving(&o.dd) {
        o.store.close().await;
        return Err(super::Usage(format!(
            "a controller (pid {pid}) serves this data dir: stop it, rotate, start it again"
        ))
        .into());
    }
    let days = o.cfg.pki.crl_next_update_days;
    if finish {
        let done = rotate_ca::finish(&o.dd, &o.store, force, days).await;
        let detail = match &done {
            Ok(left) if !left.is_empty() => format!("forced; locked out: {}", left.join(",")),
            _ => String::new(),
        };
        record_keys(&o, &done).await;
        let left = conclude(o.store, "rotate.ca_finish", "ca", &detail, done).await?;
        println!("the previous CA is no longer trusted and its key is deleted");
        if !left.is_empty() {
            println!("locked out (enroll them again): {}", left.join(", "));
        }
        return Ok(());
    }
    let Some((cert, key)) = new else {
        return Err(super::Usage("give --ca-cert and --ca-key, or --finish".into()).into());
    };
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
    };
    let rotated = match (read(&cert), read(&key)) {
        (Ok(c), Ok(k)) => rotate_ca::rotate(&o.dd, &o.store, &c, &k, days)
            .await
            .map_err(anyhow::Error::from),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    record_keys(&o, &rotated).await;
    let r = conclude(o.store, "rotate.ca", "ca", "", rotated).await?;
    println!(
        "the new CA signs from now on (root {} unchanged; server certificate for {}). The \
         previous CA stays trusted for the certificates it issued: devices move to the new \
         one as they renew; `rotate ca --finish` ends the rotation. Start the controller.",
        r.root_fingerprint,
        r.hostnames.join(", ")
    );
    Ok(())
}

/// The pid of a live controller serving `dd`, from its `serve.json`.
pub(super) fn serving(dd: &pifleet_controller::datadir::DataDir) -> Option<u32> {
    let text = std::fs::read(dd.serve_state()).ok()?;
    let bound: pifleet_controller::serve::Bound = serde_json::from_slice(&text).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", bound.pid)).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("pifleet-controller")
        .then_some(bound.pid)
}

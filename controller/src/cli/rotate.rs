//! `pifleet-controller rotate …`: replacing keys without re-enrolling anything. The running
//! controller picks a new key file up within `auth.key_reload_s`.

use clap::Subcommand;
use pifleet_controller::auth::jwt::JwtKeys;
use pifleet_controller::store::now_ms;

use super::{DataDirArg, conclude, open};

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
            let keys = conclude(o.store, "rotate.jwt_key", "jwt.key", &detail, rotated).await?;
            println!(
                "access tokens are now signed with key {}; the previous key verifies the tokens \
                 it signed until they expire. A running controller uses it within \
                 auth.key_reload_s.",
                keys.current_kid()
            );
        }
    }
    Ok(())
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
fn serving(dd: &pifleet_controller::datadir::DataDir) -> Option<u32> {
    let text = std::fs::read(dd.serve_state()).ok()?;
    let bound: pifleet_controller::serve::Bound = serde_json::from_slice(&text).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", bound.pid)).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains("pifleet-controller")
        .then_some(bound.pid)
}

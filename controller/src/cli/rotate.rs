//! `pifleet-controller rotate …`: replacing keys and the server certificate without
//! re-enrolling anything. The running controller picks new files up within
//! `auth.key_reload_s`.

use clap::Subcommand;
use pifleet_controller::auth::jwt::JwtKeys;
use pifleet_controller::pki::server_cert;
use pifleet_controller::store::now_ms;

use super::{DataDirArg, conclude, open};

#[derive(Subcommand)]
pub enum RotateCmd {
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
}

/// Longest an MFA-step token lives (`api::auth`): older keys stay for whichever is longer.
const MFA_TOKEN_TTL_S: i64 = 300;

pub async fn run(cmd: RotateCmd) -> anyhow::Result<()> {
    match cmd {
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
    }
    Ok(())
}

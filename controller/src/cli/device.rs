//! `pifleet-controller device …`: enrolled devices and their revocation.

use clap::Subcommand;
use pifleet_controller::store::RevokeOutcome;

use super::{DataDirArg, conclude, open};

#[derive(Subcommand)]
pub enum DeviceCmd {
    /// List devices.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its certificate goes on the CRL and its connection is dropped.
    Revoke {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
}

pub async fn run(cmd: DeviceCmd) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::List { dir, json } => {
            let o = open(&dir).await?;
            let devices = o.store.list_devices().await;
            o.store.close().await;
            let devices = devices?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:<20} {:<10}",
                "ID", "STATE", "HOSTNAME", "LAST SEQ"
            );
            for d in devices {
                let state = if d.revoked_at.is_some() {
                    "revoked"
                } else if d.online {
                    "online"
                } else {
                    "offline"
                };
                let last_seq = d.last_seq.map_or_else(|| "-".into(), |s| s.to_string());
                let hostname = d.hostname.as_deref().unwrap_or("-");
                println!("{:<24} {state:<8} {hostname:<20} {last_seq:<10}", d.id);
            }
        }
        DeviceCmd::Revoke { dir, id } => {
            let o = open(&dir).await?;
            let days = o.cfg.pki.crl_next_update_days;
            let log = o.cfg.backup.revocation_log_in(o.dd.root());
            let r = pifleet_controller::pki::revoke_device(&o.dd, &o.store, &id, days, &log).await;
            let detail = match &r {
                Ok(RevokeOutcome::AlreadyRevoked) => "already revoked; CRL published again",
                _ => "",
            };
            match conclude(o.store, "device.revoke", &id, detail, r).await? {
                RevokeOutcome::AlreadyRevoked => {
                    println!("device {id} was already revoked; its CRL was published again")
                }
                _ => println!("device {id} revoked; a running controller drops it within a second"),
            }
        }
    }
    Ok(())
}

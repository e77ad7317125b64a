//! `pifleet-controller device …`: enrolled devices, their revocation and review.

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
        /// Only devices flagged for review.
        #[arg(long)]
        needs_review: bool,
    },
    /// Revoke a device: its certificate goes on the CRL and its connection is dropped.
    Revoke {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
    /// Clear a device's review flag (set when it was re-registered from its certificate
    /// after a restore): it stays. To refuse it, revoke it instead.
    Review {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
}

pub async fn run(cmd: DeviceCmd) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::List {
            dir,
            json,
            needs_review,
        } => {
            let o = open(&dir).await?;
            let devices = o.store.list_devices().await;
            o.store.close().await;
            let mut devices = devices?;
            if needs_review {
                devices.retain(|d| d.needs_review);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:<20} {:<10} REVIEW",
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
                let review = match (&d.needs_review, &d.review_reason) {
                    (false, _) => "-",
                    (true, Some(why)) => why.as_str(),
                    (true, None) => "needs review",
                };
                println!(
                    "{:<24} {state:<8} {hostname:<20} {last_seq:<10} {review}",
                    d.id
                );
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
        DeviceCmd::Review { dir, id } => {
            let o = open(&dir).await?;
            let r = match o.store.clear_review(&id).await {
                Ok(None) => Err(anyhow::anyhow!("no device {id}")),
                Ok(Some(None)) => Err(anyhow::anyhow!("device {id} is not flagged for review")),
                Ok(Some(Some(reason))) => Ok(reason),
                Err(e) => Err(e.into()),
            };
            let detail = r.as_ref().map(|w| format!("was: {w}")).unwrap_or_default();
            conclude(o.store, "device.review", &id, &detail, r).await?;
            println!("device {id} reviewed: no longer flagged");
        }
    }
    Ok(())
}

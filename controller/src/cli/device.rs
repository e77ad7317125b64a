//! `pifleet-controller device …`: enrolled devices, their revocation and review, and
//! devices waiting for approval (enrolled by a token that requires it).

use clap::Subcommand;
use pifleet_controller::store::RevokeOutcome;
use pifleet_controller::store::enrollment_requests::Decided;

use super::{DataDirArg, Usage, conclude, open};

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
    /// List devices waiting for approval (and accepted ones that have not asked again).
    Requests {
        #[command(flatten)]
        dir: DataDirArg,
        /// Rejected requests too.
        #[arg(long)]
        all: bool,
    },
    /// Accept a waiting device, by request id or device id: it enrolls when it next asks.
    Accept {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
    /// Reject a waiting device, by request id or device id.
    Reject {
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
        DeviceCmd::Requests { dir, all } => {
            let o = open(&dir).await?;
            let rows = o.store.enrollment_requests(all).await;
            o.store.close().await;
            println!(
                "{:<16} {:<24} {:<9} {:<16} {:<12} KEY (SHA-256)",
                "REQUEST", "DEVICE", "STATUS", "SOURCE", "TOKEN"
            );
            for r in rows? {
                println!(
                    "{:<16} {:<24} {:<9} {:<16} {:<12} {}",
                    r.id, r.device_id, r.status, r.source, r.token_id, r.key_fingerprint
                );
            }
        }
        DeviceCmd::Accept { dir, id } => decide(&dir, &id, true).await?,
        DeviceCmd::Reject { dir, id } => decide(&dir, &id, false).await?,
    }
    Ok(())
}

/// Accepts or rejects a waiting device, audited.
async fn decide(dir: &DataDirArg, id: &str, accept: bool) -> anyhow::Result<()> {
    let o = open(dir).await?;
    let by = pifleet_controller::audit::cli_actor();
    let decided = o.store.decide_enrollment_request(id, accept, &by).await;
    let result = match decided {
        Ok(Decided::Done(row)) => Ok(row),
        Ok(Decided::Unknown) => Err(anyhow::Error::from(Usage(format!(
            "no enrollment request {id} (see `device requests`)"
        )))),
        Ok(Decided::AlreadyDecided(row)) => Err(Usage(format!(
            "the enrollment request of {} is {} already",
            row.device_id, row.status
        ))
        .into()),
        Err(e) => Err(e.into()),
    };
    let (action, done) = if accept {
        ("enrollment_request.accept", "accepted")
    } else {
        ("enrollment_request.reject", "rejected")
    };
    let target = match &result {
        Ok(row) => row.device_id.clone(),
        Err(_) => id.to_owned(),
    };
    let row = conclude(o.store, action, &target, "", result).await?;
    if accept {
        println!(
            "device {} {done}: it enrolls when it next asks (within enrollment.pending_retry_s)",
            row.device_id
        );
    } else {
        println!("device {} {done}", row.device_id);
    }
    Ok(())
}

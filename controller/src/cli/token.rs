//! `pifleet-controller token …`: enrollment tokens, single-use or provisioning (one token
//! for many devices, to bake into an SD-card image).

use std::time::Duration;

use clap::Subcommand;
use pifleet_controller::enroll::tokens;
use pifleet_controller::model::labels;
use pifleet_controller::store::now_ms;

use super::{DataDirArg, Usage, conclude, open};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an enrollment token and print it: single-use, or with --max-uses a
    /// provisioning token for many devices.
    Create {
        #[command(flatten)]
        dir: DataDirArg,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Device id to assign (otherwise the id the device proposes).
        #[arg(long)]
        name: Option<String>,
        /// Label k=v given to the device (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A provisioning token: enrolls up to this many devices (each proposes its own id).
        #[arg(long, conflicts_with = "name")]
        max_uses: Option<u32>,
        /// Devices it enrolls wait until an admin accepts them (`device accept`).
        #[arg(long)]
        require_approval: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Revoke a token by id (unused, or a provisioning token: its devices stay enrolled).
    Revoke {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
}

pub async fn run(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            dir,
            ttl,
            name,
            labels,
            max_uses,
            require_approval,
        } => {
            let o = open(&dir).await?;
            let created = match labels::parse_pairs(&labels) {
                Ok(labels) => {
                    let max = o.cfg.enrollment.max_token_ttl_s;
                    let spec = tokens::TokenSpec {
                        ttl,
                        name: name.clone(),
                        labels,
                        max_uses,
                        require_approval,
                    };
                    tokens::create_token(&o.dd, &o.store, max, &spec)
                        .await
                        .map_err(anyhow::Error::from)
                }
                Err(e) => Err(Usage(e.to_string()).into()),
            };
            let target = match &created {
                Ok(t) => t.id.clone(),
                Err(_) => name.unwrap_or_default(),
            };
            let ttl_text = humantime::format_duration(ttl);
            let mut detail = match max_uses {
                Some(n) => format!("ttl={ttl_text}; max_uses={n}"),
                None => format!("ttl={ttl_text}"),
            };
            if require_approval {
                detail.push_str("; require_approval");
            }
            let t = conclude(o.store, "token.create", &target, &detail, created).await?;
            println!("{}", t.token);
            let mut kind = match max_uses {
                Some(n) => format!("a provisioning token for up to {n} devices"),
                None => "single-use".to_owned(),
            };
            if require_approval {
                kind.push_str(" (each device waits for `device accept`)");
            }
            eprintln!(
                "token {} is {kind} and expires in {ttl_text}. On the device run:\n  pifleet-agent enroll --controller https://<controller-host>:8443 --token <token>",
                t.id
            );
        }
        TokenCmd::List { dir } => {
            let o = open(&dir).await?;
            let tokens = o.store.list_tokens().await;
            o.store.close().await;
            for t in tokens? {
                let state = if t.revoked_at.is_some() {
                    "revoked".to_owned()
                } else if let Some(max) = t.max_uses {
                    let left = if t.expires_at <= now_ms() {
                        "expired"
                    } else {
                        "active"
                    };
                    let approval = if t.require_approval {
                        ", approval required"
                    } else {
                        ""
                    };
                    format!("provisioning, {} of {max} used, {left}{approval}", t.uses)
                } else if let Some(by) = &t.used_by {
                    format!("used by {by}")
                } else if t.expires_at <= now_ms() {
                    "expired".to_owned()
                } else {
                    "unused".to_owned()
                };
                println!("{}\t{}\t{}", t.id, t.name.as_deref().unwrap_or("-"), state);
            }
        }
        TokenCmd::Revoke { dir, id } => {
            let o = open(&dir).await?;
            let revoked = match o.store.revoke_token(&id).await? {
                true => Ok(()),
                false => Err(Usage(format!("no unused token {id}"))),
            };
            conclude(o.store, "token.revoke", &id, "", revoked).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

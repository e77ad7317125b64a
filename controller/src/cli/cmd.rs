//! `pifleet-controller cmd …`: signed remote commands, queued here and sent by the running
//! controller.

use std::time::Duration;

use clap::Subcommand;
use pifleet_controller::commands::dispatch::{self, Targets};
use pifleet_controller::model::commands::ActionSpec;
use pifleet_controller::model::labels;
use pifleet_controller::model::lifecycle::Status;
use pifleet_controller::store::{Cancel, Store};

use pifleet_controller::approvals::{self, CommandRequest, Policy};

use super::{DataDirArg, Usage, conclude, open, record};

#[derive(Subcommand)]
pub enum CmdCmd {
    /// Queue a command for devices; a running controller signs and sends it when they are
    /// online. ACTION: ping | reboot | service <status|start|stop|restart> UNIT |
    /// journal UNIT [LINES] | script NAME [ARGS...] | interval SECONDS
    Send {
        #[command(flatten)]
        dir: DataDirArg,
        /// Target device (repeatable).
        #[arg(long = "device", required_unless_present = "selector")]
        devices: Vec<String>,
        /// Target every device with this label k=v (repeatable: all must match).
        #[arg(long = "selector", conflicts_with = "devices")]
        selector: Vec<String>,
        /// Lifetime: the command expires (and never runs) after this.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Wait until every command reaches a final state and print them.
        #[arg(long)]
        wait: bool,
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        action: Vec<String>,
    },
    /// List commands, newest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one command with its result, as JSON.
    Show {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
    /// Cancel a command that has not been sent yet.
    Cancel {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
}

/// `cmd send --wait`: some commands ended in another state than succeeded (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0} command(s) did not succeed")]
pub struct NotSucceeded(pub usize);

pub async fn run(cmd: CmdCmd) -> anyhow::Result<()> {
    match cmd {
        CmdCmd::Send {
            dir,
            devices,
            selector,
            ttl,
            wait,
            action,
        } => {
            let o = open(&dir).await?;
            let action = dispatch::parse_action(&action).map_err(Usage)?;
            let targets = if selector.is_empty() {
                Targets::Devices(devices)
            } else {
                Targets::Selector(labels::parse_pairs(&selector).map_err(|e| Usage(e.to_string()))?)
            };
            let ttl = ttl.unwrap_or(Duration::from_secs(o.cfg.commands.default_ttl_s));
            let answer = o.cfg.commands.answer_timeout();
            // A fleet-wide command waits for a second admin, from here as from the API.
            let policy = Policy::from(&o.cfg.approvals);
            let resolved = dispatch::resolve_targets(&o.store, &targets).await;
            if let Ok(resolved) = &resolved
                && policy.needs_approval(resolved)
            {
                action
                    .validate()
                    .map_err(|e| Usage(format!("invalid action: {e}")))?;
                if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(7 * 86_400) {
                    return Err(Usage("--ttl must be between 1 s and 7 days".into()).into());
                }
                let request = CommandRequest {
                    targets: targets.clone(),
                    action: ActionSpec::try_from(action).map_err(|e| Usage(e.to_string()))?,
                    ttl_s: ttl.as_secs(),
                };
                let actor = pifleet_controller::audit::cli_actor();
                let r =
                    approvals::request_command(&o.store, &policy, &actor, None, &request, resolved)
                        .await;
                let (target, detail) = match &r {
                    Ok(row) => (
                        row.id.clone(),
                        format!("awaiting approval: {}", row.summary),
                    ),
                    Err(_) => (format!("{targets:?}"), String::new()),
                };
                let row = conclude(o.store, "command.request", &target, &detail, r).await?;
                println!(
                    "approval {} pending until {}: {}\nA second admin approves it in the dashboard or with POST /api/v1/approvals/{}/approve.",
                    row.id,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + Duration::from_millis(u64::try_from(row.expires_at).unwrap_or(0))
                    ),
                    row.summary,
                    row.id
                );
                return Ok(());
            }
            let created = dispatch::create_commands(&o.store, &targets, action, ttl, answer)
                .await
                .map_err(|e| Usage(e.to_string()));
            // One audit entry per command created, or one for the refusal.
            let created = match created {
                Ok(created) => {
                    for (id, device) in &created {
                        record(
                            &o.store,
                            "command.send",
                            device,
                            "ok",
                            &format!("command={id}"),
                        )
                        .await?;
                    }
                    created
                }
                Err(e) => {
                    let what = format!("{targets:?}");
                    return conclude(o.store, "command.send", &what, "", Err::<(), _>(e)).await;
                }
            };
            for (id, device) in &created {
                println!("{id}\t{device}\tqueued");
            }
            let waited = if wait {
                wait_final(&o.store, &created, ttl + answer).await
            } else {
                Ok(())
            };
            o.store.close().await;
            waited?;
        }
        CmdCmd::List {
            dir,
            device,
            status,
            limit,
        } => {
            let status = match status.as_deref() {
                Some(s) => {
                    Some(Status::parse(s).ok_or_else(|| Usage(format!("unknown status {s:?}")))?)
                }
                None => None,
            };
            let o = open(&dir).await?;
            let rows = o
                .store
                .list_commands(device.as_deref(), status, limit)
                .await;
            o.store.close().await;
            for c in rows? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.device_id,
                    c.action_kind,
                    c.status.as_str(),
                    c.reason.as_deref().unwrap_or("")
                );
            }
        }
        CmdCmd::Show { dir, id } => {
            let o = open(&dir).await?;
            let c = o.store.command(&id).await;
            o.store.close().await;
            match c? {
                Some(c) => println!("{}", serde_json::to_string_pretty(&c)?),
                None => anyhow::bail!(Usage(format!("no command {id}"))),
            }
        }
        CmdCmd::Cancel { dir, id } => {
            let o = open(&dir).await?;
            let cancelled = match o.store.cancel_command(&id).await? {
                Cancel::Cancelled => Ok(()),
                Cancel::Refused(s) => Err(Usage(format!(
                    "command {id} is {} and can no longer be cancelled",
                    s.as_str()
                ))),
                Cancel::Unknown => Err(Usage(format!("no command {id}"))),
            };
            conclude(o.store, "command.cancel", &id, "", cancelled).await?;
            println!("command {id} cancelled");
        }
    }
    Ok(())
}

/// `--wait`: polls until every command is final (or `within` passes) and prints them;
/// fails with [`NotSucceeded`] unless every one succeeded.
async fn wait_final(
    store: &Store,
    created: &[(pifleet_shared::command::CommandId, String)],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    let mut rows = Vec::new();
    for (id, _) in created {
        loop {
            let row = store.command(&id.to_string()).await?;
            if let Some(r) = row.filter(|r| r.status.is_final()) {
                rows.push(r);
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("timed out waiting for command {id}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    let failed = rows
        .iter()
        .filter(|r| r.status != Status::Succeeded)
        .count();
    if failed > 0 {
        anyhow::bail!(NotSucceeded(failed));
    }
    Ok(())
}

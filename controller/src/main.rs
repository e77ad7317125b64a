//! `pifleet-controller`: argument parsing and exit codes; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pifleet_controller::admin::{self, AdminError};
use pifleet_controller::config::Config;
use pifleet_controller::datadir::{DataDir, DataDirError};
use pifleet_controller::serve::{self, ServeError};
use pifleet_controller::store::{RevokeOutcome, Store};
use pifleet_controller::{demo, logging};
use tokio_util::sync::CancellationToken;

mod audit_cli;
mod user_cli;

#[derive(Parser)]
#[command(
    name = "pifleet-controller",
    version,
    about = "pifleet fleet controller"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(clap::Args, Clone)]
struct DataDirArg {
    /// Data directory (keys, config, database).
    #[arg(long, env = "PIFLEET_DATA_DIR", default_value = "/var/lib/pifleet")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new data directory: CA, server certificates, command key, config, database.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// Extra DNS name or IP for the server certificate (repeatable).
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
    },
    /// Run the controller.
    Serve {
        #[command(flatten)]
        dir: DataDirArg,
        /// Override mqtt.listen (e.g. 127.0.0.1:0 for an ephemeral port).
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// Override https.listen.
        #[arg(long)]
        https_listen: Option<SocketAddr>,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Enrolled devices.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Signed remote commands.
    Cmd {
        #[command(subcommand)]
        cmd: CmdCmd,
    },
    /// Admin users of the API and dashboard.
    User {
        #[command(subcommand)]
        cmd: user_cli::UserCmd,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        cmd: audit_cli::AuditCmd,
    },
    /// Start a throw-away controller with local agents, to see pifleet working.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a single-use enrollment token and print it.
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
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Revoke an unused token by id.
    Revoke {
        #[command(flatten)]
        dir: DataDirArg,
        id: String,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
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

#[derive(Subcommand)]
enum CmdCmd {
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

/// Records an operator action in the audit log.
async fn audit(
    store: &Store,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) -> anyhow::Result<()> {
    let ev = pifleet_controller::audit::Event::cli(action, target, outcome, detail);
    store.append_audit(&ev).await?;
    Ok(())
}

/// `cmd send --wait`: some commands ended in another state than succeeded (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0} command(s) did not succeed")]
struct NotSucceeded(usize);

/// sysexits-style codes.
const EX_USAGE: u8 = 64;
const EX_CANTCREAT: u8 = 73;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Everything we create (keys, database, spool) is private to this user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Held to the end of `main`: dropping it flushes exported traces.
    let _log = logging::init(match &cli.cmd {
        Command::Serve { dir, .. } => Some(dir.data_dir.as_path()),
        _ => None,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    let data_dir = |e: &DataDirError| match e {
        DataDirError::Permissions { .. } | DataDirError::Owner { .. } => EX_NOPERM,
        DataDirError::Missing(_) => EX_CONFIG,
        _ => 1,
    };
    if e.downcast_ref::<NotSucceeded>().is_some() {
        return 2;
    }
    if let Some(e) = e.downcast_ref::<DataDirError>() {
        return data_dir(e);
    }
    if let Some(e) = e.downcast_ref::<ServeError>() {
        return match e {
            ServeError::Config(_) => EX_USAGE,
            ServeError::DataDir(e) => data_dir(e),
            _ => 1,
        };
    }
    if let Some(e) = e.downcast_ref::<AdminError>() {
        return match e {
            AdminError::DataDir(DataDirError::Exists(_)) => EX_CANTCREAT,
            AdminError::Invalid(_) | AdminError::Config(_) => EX_USAGE,
            _ => 1,
        };
    }
    1
}

async fn open_store(dir: &DataDirArg) -> anyhow::Result<(DataDir, Store)> {
    let dd = DataDir::new(&dir.data_dir);
    dd.check()?;
    let store = Store::open(&dd.database(), false).await?;
    Ok((dd, store))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Init { dir, hostnames } => {
            let report = admin::init(&dir.data_dir, &hostnames).await?;
            println!("Initialised {}", dir.data_dir.display());
            println!("  CA, server certificate and command key created (keys are 0600).");
            println!(
                "  First admin: {}  one-time password: {}",
                report.admin_name, report.admin_password
            );
            println!("  (shown only now; it must be changed at the first sign-in)");
            println!("  Edit {}/config.toml, then run:", dir.data_dir.display());
            println!(
                "    pifleet-controller serve --data-dir {}",
                dir.data_dir.display()
            );
        }
        Command::Serve {
            dir,
            mqtt_listen,
            https_listen,
        } => {
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                pifleet_controller::signal::shutdown().await;
                signal.cancel();
            });
            serve::run(
                DataDir::new(&dir.data_dir),
                serve::Overrides {
                    mqtt_listen,
                    https_listen,
                },
                shutdown,
            )
            .await?;
        }
        Command::Token { cmd } => match cmd {
            TokenCmd::Create {
                dir,
                ttl,
                name,
                labels,
            } => {
                let (dd, store) = open_store(&dir).await?;
                let t = admin::create_token(&dd, &store, ttl, name.as_deref(), &labels).await;
                let (target, outcome) = match &t {
                    Ok(t) => (t.id.clone(), "ok".to_owned()),
                    Err(e) => (name.clone().unwrap_or_default(), format!("refused: {e}")),
                };
                audit(
                    &store,
                    "token.create",
                    &target,
                    &outcome,
                    &format!("ttl={}", humantime::format_duration(ttl)),
                )
                .await?;
                store.close().await;
                let t = t?;
                println!("{}", t.token);
                eprintln!(
                    "token {} is single-use and expires in {}. On the device run:\n  pifleet-agent enroll --controller https://<controller-host>:8443 --token <token>",
                    t.id,
                    humantime::format_duration(ttl)
                );
            }
            TokenCmd::List { dir } => {
                let (_, store) = open_store(&dir).await?;
                for t in store.list_tokens().await? {
                    let state = if t.revoked_at.is_some() {
                        "revoked".to_owned()
                    } else if let Some(by) = &t.used_by {
                        format!("used by {by}")
                    } else if t.expires_at <= pifleet_controller::store::now_ms() {
                        "expired".to_owned()
                    } else {
                        "unused".to_owned()
                    };
                    println!("{}\t{}\t{}", t.id, t.name.as_deref().unwrap_or("-"), state);
                }
                store.close().await;
            }
            TokenCmd::Revoke { dir, id } => {
                let (_, store) = open_store(&dir).await?;
                let ok = store.revoke_token(&id).await?;
                audit(
                    &store,
                    "token.revoke",
                    &id,
                    if ok { "ok" } else { "refused: no unused token" },
                    "",
                )
                .await?;
                store.close().await;
                if !ok {
                    anyhow::bail!(AdminError::Invalid(format!("no unused token {id}")));
                }
                println!("token {id} revoked");
            }
        },
        Command::Device { cmd } => match cmd {
            DeviceCmd::List { dir, json } => {
                let (_, store) = open_store(&dir).await?;
                let devices = store.list_devices().await?;
                store.close().await;
                if json {
                    println!("{}", serde_json::to_string_pretty(&devices)?);
                } else {
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
                        println!(
                            "{:<24} {:<8} {:<20} {:<10}",
                            d.id,
                            state,
                            d.hostname.as_deref().unwrap_or("-"),
                            d.last_seq
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
            DeviceCmd::Revoke { dir, id } => {
                let (dd, store) = open_store(&dir).await?;
                let days = Config::load(&dd.config())?.pki.crl_next_update_days;
                let r = admin::revoke_device(&dd, &store, &id, days).await;
                let outcome = match &r {
                    Ok(RevokeOutcome::AlreadyRevoked) => "ok: already revoked; CRL published",
                    Ok(_) => "ok",
                    Err(e) => &format!("error: {e}"),
                };
                audit(&store, "device.revoke", &id, outcome, "").await?;
                store.close().await;
                match r? {
                    RevokeOutcome::AlreadyRevoked => {
                        println!("device {id} was already revoked; its CRL was published again")
                    }
                    _ => println!(
                        "device {id} revoked; a running controller drops it within a second"
                    ),
                }
            }
        },
        Command::Cmd { cmd } => run_cmd(cmd).await?,
        Command::User { cmd } => user_cli::run(cmd).await?,
        Command::Audit { cmd } => audit_cli::run(cmd).await?,
        Command::Demo(args) => demo::run(args).await?,
    }
    Ok(())
}

async fn run_cmd(cmd: CmdCmd) -> anyhow::Result<()> {
    use pifleet_controller::commands::dispatch::{self, Targets};
    use pifleet_controller::commands::lifecycle::Status;
    use pifleet_controller::store::Cancel;
    match cmd {
        CmdCmd::Send {
            dir,
            devices,
            selector,
            ttl,
            wait,
            action,
        } => {
            let (dd, store) = open_store(&dir).await?;
            let cfg = Config::load(&dd.config())?;
            let action = dispatch::parse_action(&action).map_err(AdminError::Invalid)?;
            let targets = if selector.is_empty() {
                Targets::Devices(devices)
            } else {
                Targets::Selector(
                    pifleet_controller::model::labels::parse_pairs(&selector)
                        .map_err(|e| AdminError::Invalid(e.to_string()))?,
                )
            };
            let ttl = ttl.unwrap_or(Duration::from_secs(cfg.commands.default_ttl_s));
            let created = dispatch::create_commands(
                &store,
                &targets,
                action,
                ttl,
                cfg.commands.answer_timeout(),
            )
            .await;
            let what = format!("{:?}", targets);
            match &created {
                Ok(c) => {
                    for (id, device) in c {
                        audit(
                            &store,
                            "command.send",
                            device,
                            "ok",
                            &format!("command={id}"),
                        )
                        .await?;
                    }
                }
                Err(e) => {
                    audit(&store, "command.send", &what, &format!("refused: {e}"), "").await?
                }
            }
            let created = created.map_err(|e| AdminError::Invalid(e.to_string()))?;
            for (id, device) in &created {
                println!("{id}\t{device}\tqueued");
            }
            if wait {
                let deadline = std::time::Instant::now() + ttl + cfg.commands.answer_timeout();
                let mut rows = Vec::new();
                for (id, _) in &created {
                    loop {
                        let row = store.command(&id.to_string()).await?;
                        if let Some(r) = row.filter(|r| r.status().is_some_and(Status::is_final)) {
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
                let failed = rows.iter().filter(|r| r.status != "succeeded").count();
                if failed > 0 {
                    store.close().await;
                    anyhow::bail!(NotSucceeded(failed));
                }
            }
            store.close().await;
        }
        CmdCmd::List {
            dir,
            device,
            status,
            limit,
        } => {
            let (_, store) = open_store(&dir).await?;
            let status = match status.as_deref() {
                Some(s) => Some(
                    Status::parse(s)
                        .ok_or_else(|| AdminError::Invalid(format!("unknown status {s:?}")))?,
                ),
                None => None,
            };
            for c in store
                .list_commands(device.as_deref(), status, limit)
                .await?
            {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.device_id,
                    c.action_kind,
                    c.status,
                    c.reason.as_deref().unwrap_or("")
                );
            }
            store.close().await;
        }
        CmdCmd::Show { dir, id } => {
            let (_, store) = open_store(&dir).await?;
            let c = store.command(&id).await?;
            store.close().await;
            match c {
                Some(c) => println!("{}", serde_json::to_string_pretty(&c)?),
                None => anyhow::bail!(AdminError::Invalid(format!("no command {id}"))),
            }
        }
        CmdCmd::Cancel { dir, id } => {
            let (_, store) = open_store(&dir).await?;
            let r = store.cancel_command(&id).await?;
            let outcome = match r {
                Cancel::Cancelled => "ok".to_owned(),
                Cancel::Refused(s) => format!("refused: {}", s.as_str()),
                Cancel::Unknown => "refused: unknown command".to_owned(),
            };
            audit(&store, "command.cancel", &id, &outcome, "").await?;
            store.close().await;
            match r {
                Cancel::Cancelled => println!("command {id} cancelled"),
                Cancel::Refused(s) => anyhow::bail!(AdminError::Invalid(format!(
                    "command {id} is {} and can no longer be cancelled",
                    s.as_str()
                ))),
                Cancel::Unknown => anyhow::bail!(AdminError::Invalid(format!("no command {id}"))),
            }
        }
    }
    Ok(())
}

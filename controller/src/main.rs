//! `pifleet-controller`: argument parsing and exit codes; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pifleet_controller::admin::{self, AdminError};
use pifleet_controller::datadir::{DataDir, DataDirError};
use pifleet_controller::serve::{self, ServeError};
use pifleet_controller::store::Store;
use pifleet_controller::{demo, logging};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pifleet-controller",
    version,
    about = "pifleet fleet controller"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct DataDirArg {
    /// Data directory (keys, config, database).
    #[arg(long, env = "PIFLEET_DATA_DIR", default_value = "/var/lib/pifleet")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
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

/// sysexits-style codes.
const EX_USAGE: u8 = 64;
const EX_CANTCREAT: u8 = 73;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Everything we create (keys, database, spool) is private to this user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    logging::init();
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
    if let Some(e) = e.downcast_ref::<ServeError>() {
        return match e {
            ServeError::Config(_) => EX_USAGE,
            ServeError::DataDir(DataDirError::Permissions { .. }) => EX_NOPERM,
            ServeError::DataDir(DataDirError::Missing(_)) => EX_CONFIG,
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
        Cmd::Init { dir, hostnames } => {
            admin::init(&dir.data_dir, &hostnames).await?;
            println!("Initialised {}", dir.data_dir.display());
            println!("  CA, server certificate and command key created (keys are 0600).");
            println!("  Edit {}/config.toml, then run:", dir.data_dir.display());
            println!(
                "    pifleet-controller serve --data-dir {}",
                dir.data_dir.display()
            );
        }
        Cmd::Serve {
            dir,
            mqtt_listen,
            https_listen,
        } => {
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
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
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Create {
                dir,
                ttl,
                name,
                labels,
            } => {
                let (dd, store) = open_store(&dir).await?;
                let t = admin::create_token(&dd, &store, ttl, name.as_deref(), &labels).await?;
                store.close().await;
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
                store.close().await;
                if !ok {
                    anyhow::bail!(AdminError::Invalid(format!("no unused token {id}")));
                }
                println!("token {id} revoked");
            }
        },
        Cmd::Device { cmd } => match cmd {
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
                let r = admin::revoke_device(&dd, &store, &id).await;
                store.close().await;
                r?;
                println!("device {id} revoked; a running controller drops it within a second");
            }
        },
        Cmd::Demo(args) => demo::run(args).await?,
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C still works through the default handler.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

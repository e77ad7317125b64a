//! The command line: what each subcommand takes and does. `main.rs` only parses it and
//! turns errors into exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pifleet_controller::audit::Event;
use pifleet_controller::config::Config;
use pifleet_controller::datadir::DataDir;
use pifleet_controller::serve;
use pifleet_controller::store::Store;
use pifleet_controller::{demo, signal};
use pifleet_controller::{pki, setup};
use tokio_util::sync::CancellationToken;

pub mod approval;
pub mod audit;
pub mod backup;
pub mod broker;
pub mod cmd;
pub mod device;
pub mod release;
pub mod remote;
pub mod rollout;
pub mod rotate;
pub mod store;
pub mod token;
pub mod user;

/// A mistake in how a command was called (exit code 64): an unknown id, a bad argument.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

#[derive(Parser)]
#[command(
    name = "pifleet-controller",
    version,
    about = "pifleet fleet controller"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(clap::Args, Clone)]
pub struct DataDirArg {
    /// Data directory (keys, config, database).
    #[arg(long, env = "PIFLEET_DATA_DIR", default_value = "/var/lib/pifleet")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a new data directory: CA, server certificates, command key, config, database.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// Extra DNS name or IP for the server certificate (repeatable).
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// Sign with this intermediate CA instead of making a new CA: its certificate
        /// followed by its chain up to the (offline) root, PEM. Devices pin the root.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The intermediate CA's private key (PEM, PKCS#8); copied into the data dir 0600.
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Keep the fleet in this PostgreSQL database (postgres://user@host:port/db, no
        /// password) instead of the data dir's SQLite file: the scale-out mode. The
        /// password comes from --store-password-file or PIFLEET_STORE_PASSWORD.
        #[arg(long)]
        store_url: Option<String>,
        /// The file holding the PostgreSQL password (written into the config as
        /// store.password_file).
        #[arg(long, requires = "store_url")]
        store_password_file: Option<PathBuf>,
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
        cmd: token::TokenCmd,
    },
    /// Enrolled devices.
    Device {
        #[command(subcommand)]
        cmd: device::DeviceCmd,
    },
    /// Signed remote commands.
    Cmd {
        #[command(subcommand)]
        cmd: cmd::CmdCmd,
    },
    /// Application releases.
    Release {
        #[command(subcommand)]
        cmd: Box<release::ReleaseCmd>,
    },
    /// Rollouts of releases to the fleet, in batches.
    Rollout {
        #[command(subcommand)]
        cmd: Box<rollout::RolloutCmd>,
    },
    /// Replace keys without re-enrolling devices or signing anyone out.
    Rotate {
        #[command(subcommand)]
        cmd: rotate::RotateCmd,
    },
    /// Requests that wait for a second admin's approval.
    Approval {
        #[command(subcommand)]
        cmd: approval::ApprovalCmd,
    },
    /// Admin users of the API and dashboard.
    User {
        #[command(subcommand)]
        cmd: user::UserCmd,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Backups of the data dir, their checks, and an offline restore.
    Backup {
        #[command(subcommand)]
        cmd: backup::BackupCmd,
    },
    /// The database behind the data dir: moving a fleet to PostgreSQL.
    Store {
        #[command(subcommand)]
        cmd: store::StoreCmd,
    },
    /// Configuration and revocation for an external MQTT broker (Mosquitto 2).
    BrokerConfig {
        #[command(subcommand)]
        cmd: broker::BrokerCmd,
    },
    /// Beside an external broker on a host with no controller: follow revocations through
    /// the database (install each new CRL, reload the broker, end the revoked sessions).
    BrokerSync(broker::SyncArgs),
    /// Start a throw-away controller with local agents, to see pifleet working.
    Demo(demo::DemoArgs),
}

impl Command {
    /// The data dir whose config decides where `serve` logs, if this is `serve`.
    pub fn serve_dir(&self) -> Option<&std::path::Path> {
        match self {
            Command::Serve { dir, .. } => Some(dir.data_dir.as_path()),
            _ => None,
        }
    }
}

/// Runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Init {
            dir,
            hostnames,
            ca_cert,
            ca_key,
            store_url,
            store_password_file,
        } => {
            let store = store_url.map(|url| setup::StoreChoice {
                url,
                password_file: store_password_file,
            });
            init(&dir, &hostnames, ca_cert.zip(ca_key), store.as_ref()).await?
        }
        Command::Serve {
            dir,
            mqtt_listen,
            https_listen,
        } => {
            let shutdown = CancellationToken::new();
            let on_signal = shutdown.clone();
            tokio::spawn(async move {
                signal::shutdown().await;
                on_signal.cancel();
            });
            let ov = serve::Overrides {
                mqtt_listen,
                https_listen,
            };
            serve::run(DataDir::new(&dir.data_dir), ov, shutdown).await?;
        }
        Command::Token { cmd } => token::run(cmd).await?,
        Command::Device { cmd } => device::run(cmd).await?,
        Command::Cmd { cmd } => cmd::run(cmd).await?,
        Command::Approval { cmd } => approval::run(cmd).await?,
        Command::Release { cmd } => release::run(*cmd).await?,
        Command::Rollout { cmd } => rollout::run(*cmd).await?,
        Command::Rotate { cmd } => rotate::run(cmd).await?,
        Command::User { cmd } => user::run(cmd).await?,
        Command::Audit { cmd } => audit::run(cmd).await?,
        Command::Backup { cmd } => backup::run(cmd).await?,
        Command::Store { cmd } => store::run(cmd).await?,
        Command::BrokerConfig { cmd } => broker::run(cmd).await?,
        Command::BrokerSync(args) => broker::sync(args).await?,
        Command::Demo(args) => demo::run(args).await?,
    }
    Ok(())
}

async fn init(
    dir: &DataDirArg,
    hostnames: &[String],
    ca: Option<(PathBuf, PathBuf)>,
    store: Option<&setup::StoreChoice>,
) -> anyhow::Result<()> {
    let intermediate = match &ca {
        Some((cert, key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let ca = pki::Ca::from_pem(&read(cert)?, &read(key)?)
                .with_context(|| format!("the CA in {}", cert.display()))?;
            Some(ca)
        }
        None => None,
    };
    let report = setup::init_with(&dir.data_dir, hostnames, intermediate, store).await?;
    let path = dir.data_dir.display();
    println!("Initialised {path}");
    if ca.is_some() {
        println!("  Signing with the given intermediate CA; devices pin its root.");
        println!("  Server certificate, command key and release key created (keys are 0600).");
    } else {
        println!("  CA, server certificate, command key and release key created (keys are 0600).");
    }
    println!(
        "  CA fingerprint (SHA-256 of the root): {}",
        report.ca_fingerprint
    );
    println!(
        "  First admin: {}  one-time password: {}",
        report.admin_name, report.admin_password
    );
    println!("  (shown only now; it must be changed at the first sign-in)");
    if let Some(s) = store {
        println!("  The fleet is in PostgreSQL: {}", s.url);
    }
    println!("  Edit {path}/config.toml, then run:");
    println!("    pifleet-controller serve --data-dir {path}");
    Ok(())
}

/// An open data dir: checked (owner, modes), its configuration and its database.
pub struct Opened {
    pub dd: DataDir,
    pub cfg: Config,
    pub store: Store,
}

/// Checks and opens the data dir `dir` names; a write waits for the running controller's
/// write lock up to `store.busy_timeout_ms`.
pub async fn open(dir: &DataDirArg) -> anyhow::Result<Opened> {
    let dd = DataDir::new(&dir.data_dir);
    dd.check()?;
    let cfg = Config::load(&dd.config())?;
    let store = pifleet_controller::database::open(&dd, &cfg.store, false).await?;
    Ok(Opened { dd, cfg, store })
}

/// Appends an operator action to the audit log, attributed to the invoking OS user.
pub async fn record(
    store: &Store,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &str,
) -> anyhow::Result<()> {
    store
        .append_audit(&Event::cli(action, target, outcome, detail))
        .await?;
    Ok(())
}

/// How every writing command ends: its outcome goes to the audit log (`ok`, or
/// `refused: <why>`), the store is closed, and the action's result is handed back.
pub async fn conclude<T, E>(
    store: Store,
    action: &str,
    target: &str,
    detail: &str,
    result: Result<T, E>,
) -> anyhow::Result<T>
where
    E: std::fmt::Display + Into<anyhow::Error>,
{
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("refused: {e}"),
    };
    let recorded = record(&store, action, target, &outcome, detail).await;
    store.close().await;
    recorded?;
    result.map_err(Into::into)
}

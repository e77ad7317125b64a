//! `pifleet-controller broker-config …`: what an external MQTT broker (Mosquitto 2) needs
//! from a controller data dir — its configuration, the controllers' identities — and the
//! two steps that make a revocation reach it: `sync-crl` (its CRL rewritten and reloaded)
//! and `kick` (the device's live session ended).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use pifleet_controller::broker::identity::{self, ControllerName};
use pifleet_controller::broker::mosquitto::{self, BrokerDir, Options};
use pifleet_controller::broker::revoke::{self, BrokerProcess};
use pifleet_controller::broker::sync::{self as broker_sync, BrokerSync};
use pifleet_controller::broker::{ControllerClientConfig, kick};
use pifleet_controller::database;
use pifleet_controller::datadir::DataDir;
use pifleet_controller::store::{PgOptions, Store};
use pifleet_shared::DeviceId;
use tokio_util::sync::CancellationToken;

use super::{DataDirArg, Usage, conclude, open};

#[derive(Subcommand)]
pub enum BrokerCmd {
    /// Write Mosquitto 2's configuration (with its server certificate, CA, CRL and ACL
    /// files) into a directory: a device listener and a controller listener.
    Mosquitto {
        #[command(flatten)]
        dir: DataDirArg,
        /// Directory for the broker's files (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Where devices connect.
        #[arg(long, default_value = "0.0.0.0:8883")]
        device_listen: SocketAddr,
        /// Where controllers connect; keep it off the devices' network.
        #[arg(long, default_value = "127.0.0.1:8884")]
        controller_listen: SocketAddr,
        /// DNS name or IP address devices and controllers reach the broker by (repeatable);
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// Name of a controller allowed on the controller listener (repeatable), as given
        /// to `controller-identity --name`.
        #[arg(long = "controller", default_value = "main")]
        controllers: Vec<String>,
        /// The system user Mosquitto runs as (its `user` setting).
        #[arg(long, default_value = "mosquitto")]
        user: String,
        /// Replace a different configuration already in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Issue a controller's client certificate for the broker's controller listener.
    ControllerIdentity {
        #[command(flatten)]
        dir: DataDirArg,
        /// The controller's name (3-63 of a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        /// Directory for ca.crt, controller.crt and controller.key (0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace an identity already in the directory.
        #[arg(long)]
        force: bool,
    },
    /// Copy the data dir's CRL over the broker's and make the broker reload it (SIGHUP).
    SyncCrl {
        #[command(flatten)]
        dir: DataDirArg,
        /// The broker's directory (`mosquitto --out`).
        #[arg(long)]
        out: PathBuf,
        /// The broker's pid file; default: the one its generated configuration names.
        #[arg(long, conflicts_with = "pid")]
        pid_file: Option<PathBuf>,
        /// The broker's pid.
        #[arg(long)]
        pid: Option<i32>,
        /// Copy this CRL instead of the data dir's (a copy of it on the broker's host).
        #[arg(long)]
        crl: Option<PathBuf>,
    },
    /// End a device's live session at the broker (from the controller listener).
    Kick {
        /// A directory `controller-identity` wrote.
        #[arg(long)]
        identity: PathBuf,
        /// The broker's host name (as in its certificate).
        #[arg(long, default_value = "localhost")]
        host: String,
        /// The controller listener's port.
        #[arg(long, default_value_t = 8884)]
        port: u16,
        /// The device.
        #[arg(long)]
        device: String,
        /// Longest the kick may take, in seconds.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        timeout_s: u64,
    },
}

pub async fn run(cmd: BrokerCmd) -> anyhow::Result<()> {
    match cmd {
        BrokerCmd::Mosquitto {
            dir,
            out,
            device_listen,
            controller_listen,
            hostnames,
            controllers,
            user,
            force,
        } => {
            let controllers = controllers
                .iter()
                .map(|n| ControllerName::parse(n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Usage(e.to_string()))?;
            let opts_hostnames_empty = hostnames.is_empty();
            let opts = Options {
                device_listen,
                controller_listen,
                hostnames,
                controllers,
                run_as: user,
                force,
            };
            let o = open(&dir).await?;
            let generated = mosquitto::generate(&o.dd, &out, &opts);
            let detail = match &generated {
                Ok(g) if g.written => "broker server certificate issued".to_owned(),
                Ok(_) => "unchanged".to_owned(),
                Err(_) => String::new(),
            };
            let target = out.display().to_string();
            let g = conclude(o.store, "broker.config", &target, &detail, generated).await?;
            if g.written {
                println!("Wrote {}", g.conf.display());
            } else {
                println!("{} is up to date", g.conf.display());
            }
            println!("  Run: mosquitto -c {}", g.conf.display());
            if g.written && opts_hostnames_empty {
                println!(
                    "  No --hostname given: the broker's certificate names only localhost, \
                     127.0.0.1 and ::1, so devices elsewhere cannot verify it."
                );
            }
        }
        BrokerCmd::ControllerIdentity {
            dir,
            name,
            out,
            force,
        } => {
            let name = ControllerName::parse(&name).map_err(|e| Usage(e.to_string()))?;
            let o = open(&dir).await?;
            let issued = identity::issue(&o.dd, &name, &out, force);
            let detail = issued
                .as_ref()
                .map(|i| format!("serial {}", i.serial))
                .unwrap_or_default();
            let issued = conclude(
                o.store,
                "broker.controller_identity",
                name.as_str(),
                &detail,
                issued,
            )
            .await?;
            println!(
                "Issued {} (serial {}) into {}",
                issued.common_name,
                issued.serial,
                out.display()
            );
        }
        BrokerCmd::SyncCrl {
            dir,
            out,
            pid_file,
            pid,
            crl,
        } => {
            let broker = BrokerDir::new(&out);
            let process = match (pid, pid_file) {
                (Some(pid), _) => BrokerProcess::Pid(pid),
                (None, Some(f)) => BrokerProcess::PidFile(f),
                (None, None) => BrokerProcess::PidFile(broker.pid_file()),
            };
            match crl {
                Some(path) => revoke::sync_crl_from(&path, &broker)?,
                None => revoke::sync_crl(&checked(&dir)?, &broker)?,
            }
            let pid = revoke::reload(&process)?;
            println!(
                "CRL copied to {}; broker (pid {pid}) reloading",
                broker.crl().display()
            );
        }
        BrokerCmd::Kick {
            identity,
            host,
            port,
            device,
            timeout_s,
        } => {
            let device = DeviceId::parse(&device)
                .with_context(|| format!("device {device:?}"))
                .map_err(|e| Usage(format!("{e:#}")))?;
            let mut client = ControllerClientConfig::from_identity_dir(&identity, &host, port);
            client.timeout = Duration::from_secs(timeout_s);
            kick(&client, &device).await?;
            println!("Kicked {device}");
        }
    }
    Ok(())
}

/// `pifleet-controller broker-sync`.
#[derive(clap::Args)]
pub struct SyncArgs {
    /// The fleet's PostgreSQL database (postgres://user@host:port/db, no password); a role
    /// that may read `published_crl` and `certificates` is enough.
    #[arg(long)]
    store_url: String,
    /// The file holding the database password (else PIFLEET_STORE_PASSWORD).
    #[arg(long)]
    store_password_file: Option<PathBuf>,
    /// The broker's directory (`broker-config mosquitto --out`): its crl.pem and ca.crt.
    #[arg(long)]
    broker_dir: PathBuf,
    /// The broker's pid file; default: the one its generated configuration names.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// A directory `broker-config controller-identity` wrote, to end revoked sessions.
    #[arg(long)]
    identity_dir: PathBuf,
    /// The broker's controller listener, host:port (the host as in its certificate).
    #[arg(long, default_value = "localhost:8884")]
    broker: String,
    /// Seconds between two reads of the database.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    check_s: u64,
}

/// Follows the database's CRL until SIGTERM or SIGINT.
pub async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| Usage(format!("--broker {:?}: expected host:port", args.broker)))?;
    let broker = BrokerDir::new(&args.broker_dir);
    if !broker.ca().is_file() {
        return Err(Usage(format!(
            "{} is not a broker directory (no ca.crt): give the directory `broker-config              mosquitto --out` wrote",
            args.broker_dir.display()
        ))
        .into());
    }
    let opts = PgOptions {
        password: database::password(args.store_password_file.as_deref())?,
        max_connections: 2,
        // A pass waits for the database no longer than the time between passes.
        acquire_timeout: Duration::from_secs(args.check_s.min(10)),
    };
    if !args.store_url.starts_with("postgres://") && !args.store_url.starts_with("postgresql://") {
        return Err(Usage(format!(
            "--store-url {:?}: expected postgres://…",
            args.store_url
        ))
        .into());
    }
    let store = Store::connect_postgres_reader(&args.store_url, &opts)
        .map_err(|e| Usage(format!("--store-url: {e}")))?;
    let process = BrokerProcess::PidFile(args.pid_file.unwrap_or_else(|| broker.pid_file()));
    let opts = broker_sync::Options {
        broker,
        process,
        kick: ControllerClientConfig::from_identity_dir(&args.identity_dir, host, port),
        check: Duration::from_secs(args.check_s),
        settle: Duration::from_millis(300),
    };
    // The identity must load now: a typo should stop the service, not every kick.
    opts.kick.tls()?;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        pifleet_controller::signal::shutdown().await;
        on_signal.cancel();
    });
    BrokerSync::new(store.clone(), opts).run(shutdown).await;
    store.close().await;
    Ok(())
}

/// The data dir, checked (owner, modes).
fn checked(dir: &DataDirArg) -> anyhow::Result<DataDir> {
    let dd = DataDir::new(&dir.data_dir);
    dd.check()?;
    Ok(dd)
}

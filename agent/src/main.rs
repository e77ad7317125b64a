//! `pifleet-agent`: argument parsing and exit codes; the work is in the library.

use std::process::ExitCode;

use pifleet_agent::cli::{self, Cli};
use pifleet_agent::config::AgentConfig;
use pifleet_agent::enroll::{self, EnrollOptions};
use pifleet_agent::run;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

const EX_USAGE: u8 = 64;
/// A command line that does not parse.
const EX_ARGS: u8 = 2;

fn main() -> ExitCode {
    let cli = match cli::parse(
        std::env::args_os().skip(1).collect(),
        std::env::var("PIFLEET_TOKEN").ok(),
    ) {
        Ok(Cli::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Cli::Version) => {
            println!("pifleet-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::HELP);
            return ExitCode::from(EX_ARGS);
        }
    };
    // Everything we create (keys, database, spool) is private to this user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // `RUST_LOG` in the `level,target=level` form; `Targets` needs no regex engine, which
    // keeps the agent binary small.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // One format, JSON lines on stderr, in a terminal too: a second (text) formatter costs
    // the size budget ~20 KB. `journalctl -u pifleet-agent -o cat | jq` reads them.
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = registry.with(layer.json().flatten_event(true)).try_init();
    // One thread is plenty for the agent and keeps its memory small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match cli {
            Cli::Help | Cli::Version => ExitCode::SUCCESS,
            Cli::Enroll {
                controller,
                token,
                config,
                device_id,
                interval,
                force,
                serial_file,
            } => {
                let opts = EnrollOptions {
                    serial_file,
                    keep: None,
                    controller,
                    token,
                    config: config.clone(),
                    device_id,
                    interval_s: interval,
                    force,
                };
                match enroll::enroll(&opts).await {
                    Ok(id) => {
                        println!(
                            "enrolled as {id}; configuration written to {}",
                            config.display()
                        );
                        println!(
                            "start the agent with: pifleet-agent run --config {}",
                            config.display()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Cli::Run { config } => {
                // An image's first boot: enroll with the provisioning token first.
                match pifleet_agent::bootstrap::enroll_if_first_boot(&config).await {
                    Ok(Some(id)) => tracing::info!(device = %id, "enrolled at first boot"),
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                let cfg = match AgentConfig::load(&config) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                };
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    signal.cancel();
                });
                match run::run(cfg, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

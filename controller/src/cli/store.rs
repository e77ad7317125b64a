//! `pifleet-controller store …`: the database behind a data dir.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use pifleet_controller::config::Config;
use pifleet_controller::database;
use pifleet_controller::datadir;

use super::{DataDirArg, Usage, open, record};

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Copy the data dir's fleet from its SQLite file into a new, empty PostgreSQL
    /// database, then point config.toml's [store] at it. The controller must be stopped;
    /// the SQLite file is kept.
    CopyToPostgres {
        #[command(flatten)]
        dir: DataDirArg,
        /// The database (postgres://user@host:port/db, no password).
        #[arg(long)]
        url: String,
        /// The file holding the PostgreSQL password (written into the config as
        /// store.password_file); else PIFLEET_STORE_PASSWORD.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

pub async fn run(cmd: StoreCmd) -> anyhow::Result<()> {
    match cmd {
        StoreCmd::CopyToPostgres {
            dir,
            url,
            password_file,
        } => copy_to_postgres(&dir, &url, password_file).await,
    }
}

async fn copy_to_postgres(
    dir: &DataDirArg,
    url: &str,
    password_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let o = open(dir).await?;
    if let Some(old) = o.cfg.store.url.clone() {
        return refused(
            o,
            format!("this data dir's fleet is already in PostgreSQL ({old})"),
        )
        .await;
    }
    if let Some(pid) = super::rotate::serving(&o.dd) {
        return refused(
            o,
            format!("a controller (pid {pid}) serves this data dir: stop it, copy, start it again"),
        )
        .await;
    }
    // The new configuration is checked (the URL carries no password) before anything moves.
    let config_path = o.dd.config();
    let old_config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let new_config = database::config_naming(&old_config, url, password_file.as_deref());
    let new_cfg = match Config::parse(&new_config, &config_path) {
        Ok(c) => c,
        Err(e) => return refused(o, e.to_string()).await,
    };
    let target = match database::open(&o.dd, &new_cfg.store, false).await {
        Ok(t) => t,
        Err(e) => {
            o.store.close().await;
            return Err(e).context(format!("opening {url}"));
        }
    };
    let copied = o.store.copy_to(&target).await;
    o.store.close().await;
    let report = match copied {
        Ok(r) => r,
        Err(e) => {
            target.close().await;
            return Err(e.into());
        }
    };
    let detail = report
        .rows
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let recorded = record(&target, "store.copy", url, "ok", &detail).await;
    target.close().await;
    recorded?;
    datadir::write_private(&config_path, new_config.as_bytes()).with_context(|| {
        format!(
            "the fleet is in {url}, but {} could not be rewritten: set [store] url = \"{url}\" \
             there by hand",
            config_path.display()
        )
    })?;

    println!("Copied the fleet into {url}:");
    for (table, n) in &report.rows {
        println!("  {table:<22} {n}");
    }
    if report.telemetry_in_default > 0 {
        println!(
            "  {} samples older than the day partitions are in telemetry_default (retention \
             removes them in time)",
            report.telemetry_in_default
        );
    }
    println!(
        "  {} now names it in [store]; {} is kept: remove it once satisfied.",
        config_path.display(),
        o.dd.database().display()
    );
    println!(
        "  Start the controller: pifleet-controller serve --data-dir {}",
        o.dd.root().display()
    );
    Ok(())
}

/// Closes the data dir's store and refuses (exit code 64).
async fn refused(o: super::Opened, why: String) -> anyhow::Result<()> {
    o.store.close().await;
    Err(Usage(why).into())
}

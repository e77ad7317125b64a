//! `pifleet-controller backup …`: backups of the data dir, their checks, and an offline
//! restore into a new data dir.

use std::path::PathBuf;

use clap::Subcommand;
use pifleet_controller::backup;

use super::{DataDirArg, conclude, open};

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Write one backup (database snapshot, keys, certificates, config) while the
    /// controller may keep running.
    Create {
        #[command(flatten)]
        dir: DataDirArg,
        /// Directory to write into [default: `backup.dir` of config.toml].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Encrypt to this age recipient (`age1…`) [default: `backup.recipient`].
        #[arg(long)]
        recipient: Option<String>,
    },
    /// List the backups in a directory: time, size, encrypted, verified.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Directory to list [default: `backup.dir` of config.toml].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a backup: checksum, archive, metadata, and the database's integrity.
    Verify {
        file: PathBuf,
        /// age identity file, for an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Restore a backup into a new (missing or empty) data dir, with no controller running
    /// on it. Enrollment tokens still unused in the backup are revoked.
    Restore {
        file: PathBuf,
        /// The data dir to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// age identity file, for an encrypted backup.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// The revocation log (or the old data dir holding it): devices revoked after the
        /// backup are revoked again.
        #[arg(long, required_unless_present = "accept_lost_revocations")]
        revocations: Option<PathBuf>,
        /// Restore without a revocation log: devices revoked after the backup are valid
        /// again until revoked once more.
        #[arg(long, conflicts_with = "revocations")]
        accept_lost_revocations: bool,
    },
}

pub async fn run(cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Create {
            dir,
            out,
            recipient,
        } => {
            let o = open(&dir).await?;
            let out = out.unwrap_or_else(|| o.cfg.backup.dir_in(o.dd.root()));
            let recipient = recipient.or_else(|| o.cfg.backup.recipient.clone());
            let made = backup::create(&o.dd, &o.store, &out, recipient.as_deref()).await;
            let target = match &made {
                Ok(m) => m.path.display().to_string(),
                Err(_) => out.display().to_string(),
            };
            let detail = format!("encrypted={}", recipient.is_some());
            let made = conclude(o.store, "backup.create", &target, &detail, made).await?;
            println!("{}", made.path.display());
            eprintln!(
                "backup of {} devices and {} samples, {} bytes, sha256 {}",
                made.metadata.devices, made.metadata.samples, made.size, made.sha256
            );
        }
        BackupCmd::List { dir, out } => {
            let out = match out {
                Some(out) => out,
                None => {
                    let o = open(&dir).await?;
                    o.store.close().await;
                    o.cfg.backup.dir_in(o.dd.root())
                }
            };
            for b in backup::list(&out)? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    b.stamp,
                    b.size,
                    if b.encrypted { "encrypted" } else { "plain" },
                    if b.verified { "verified" } else { "unverified" },
                    b.path.display()
                );
            }
        }
        BackupCmd::Verify { file, identity } => {
            let v = backup::verify(&file, identity.as_deref()).await?;
            let m = &v.metadata;
            println!(
                "{} is sound: made {} by controller {}, schema {}, {} devices, {} samples",
                file.display(),
                m.created_at,
                m.controller_version,
                m.schema_version,
                m.devices,
                m.samples
            );
        }
        BackupCmd::Restore {
            file,
            data_dir,
            identity,
            revocations,
            accept_lost_revocations: _,
        } => {
            let revocations = match revocations {
                Some(path) => backup::Revocations::From(path),
                None => backup::Revocations::AcceptLost,
            };
            let r = backup::restore(&file, identity.as_deref(), &data_dir, &revocations).await?;
            let dir = DataDirArg {
                data_dir: r.data_dir.clone(),
            };
            let o = open(&dir).await?;
            let detail = format!(
                "from={} tokens_revoked={} devices_revoked_again={} commands_expired={}{}",
                file.display(),
                r.tokens_revoked,
                r.devices_revoked,
                r.commands_expired,
                match &revocations {
                    backup::Revocations::From(p) => format!(" revocations={}", p.display()),
                    backup::Revocations::AcceptLost => " revocations=accepted_lost".into(),
                }
            );
            conclude(
                o.store,
                "backup.restore",
                &r.metadata.created_at,
                &detail,
                Ok::<(), anyhow::Error>(()),
            )
            .await?;
            println!("Restored {} into {}", file.display(), data_dir.display());
            println!(
                "  {} devices, {} samples as of {}; {} unused enrollment tokens revoked.",
                r.metadata.devices, r.metadata.samples, r.metadata.created_at, r.tokens_revoked
            );
            println!("  Samples acknowledged after the backup was made are not in it.");
            println!(
                "  Start it with: pifleet-controller serve --data-dir {}",
                data_dir.display()
            );
        }
    }
    Ok(())
}

//! `pifleet-controller`: argument parsing and exit codes; the commands are in `cli/`, the
//! work in the library.

use std::process::ExitCode;

use clap::Parser;
use pifleet_controller::approvals::ApprovalError;
use pifleet_controller::auth::users::UserError;
use pifleet_controller::backup::BackupError;
use pifleet_controller::datadir::DataDirError;
use pifleet_controller::enroll::tokens::TokenError;
use pifleet_controller::logging;
use pifleet_controller::releases::ReleaseError;
use pifleet_controller::rollouts::RolloutError;
use pifleet_controller::serve::ServeError;
use pifleet_controller::setup::SetupError;
use pifleet_controller::store::users::UserChange;

mod cli;

/// sysexits-style codes.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_CANTCREAT: u8 = 73;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // Everything we create (keys, database, spool) is private to this user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // Held to the end of `main`: dropping it flushes exported traces.
    let _log = logging::init(args.cmd.serve_dir());
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
    match rt.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a failed command: 2 when `cmd send --wait` saw commands fail, 64 for a
/// caller's mistake or a bad configuration, 65 for a damaged or unreadable backup, 73 when
/// `init` or `backup restore` would overwrite, 77 for a data dir of another user or open to
/// others, 78 for a missing data dir, 1 for anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    let data_dir = |e: &DataDirError| match e {
        DataDirError::Permissions { .. } | DataDirError::Owner { .. } => EX_NOPERM,
        DataDirError::Missing(_) => EX_CONFIG,
        _ => 1,
    };
    if e.downcast_ref::<cli::cmd::NotSucceeded>().is_some() {
        return 2;
    }
    if e.downcast_ref::<UserChange>().is_some() {
        return EX_USAGE;
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
    if let Some(e) = e.downcast_ref::<ApprovalError>() {
        return match e {
            ApprovalError::Store(_) | ApprovalError::Corrupt(..) => 1,
            _ => EX_USAGE,
        };
    }
    if let Some(e) = e.downcast_ref::<ReleaseError>() {
        return match e {
            ReleaseError::Invalid(_)
            | ReleaseError::Intake(_)
            | ReleaseError::Git(_)
            | ReleaseError::AlreadyExists { .. }
            | ReleaseError::NotFound(_)
            | ReleaseError::InUse { .. } => EX_USAGE,
            _ => 1,
        };
    }
    if let Some(e) = e.downcast_ref::<RolloutError>() {
        return match e {
            RolloutError::Store(_) | RolloutError::Corrupt(..) => 1,
            RolloutError::Approval(ApprovalError::Store(_) | ApprovalError::Corrupt(..)) => 1,
            RolloutError::Approval(ApprovalError::OwnRequest) => EX_NOPERM,
            _ => EX_USAGE,
        };
    }
    if let Some(r) = e.downcast_ref::<cli::remote::Refused>() {
        return match r.status {
            401 | 403 => EX_NOPERM,
            400..=499 => EX_USAGE,
            _ => 1,
        };
    }
    if let Some(e) = e.downcast_ref::<BackupError>() {
        return match e {
            BackupError::TargetNotEmpty(_) | BackupError::Exists(_) => EX_CANTCREAT,
            BackupError::Recipient(_)
            | BackupError::Identity { .. }
            | BackupError::NeedsIdentity(_) => EX_USAGE,
            BackupError::NoChecksum(_)
            | BackupError::Checksum { .. }
            | BackupError::Malformed { .. }
            | BackupError::Decrypt { .. }
            | BackupError::Corrupt(_)
            | BackupError::TooNew { .. } => EX_DATAERR,
            BackupError::DataDir(e) => data_dir(e),
            _ => 1,
        };
    }
    if e.downcast_ref::<cli::Usage>().is_some() {
        return EX_USAGE;
    }
    if let Some(e) = e.downcast_ref::<SetupError>() {
        return match e {
            SetupError::DataDir(DataDirError::Exists(_)) => EX_CANTCREAT,
            SetupError::Config(_) => EX_USAGE,
            _ => 1,
        };
    }
    if let Some(e) = e.downcast_ref::<TokenError>() {
        return match e {
            TokenError::Invalid(_) => EX_USAGE,
            _ => 1,
        };
    }
    if let Some(e) = e.downcast_ref::<UserError>() {
        return match e {
            UserError::Invalid(_) | UserError::Change(_) => EX_USAGE,
            _ => 1,
        };
    }
    if e.downcast_ref::<pifleet_controller::config::ConfigError>()
        .is_some()
    {
        return EX_USAGE;
    }
    1
}

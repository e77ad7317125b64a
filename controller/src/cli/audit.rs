//! `pifleet-controller audit …`: verify and print the hash-chained audit log. Both stream
//! the log, so its length does not matter.

use std::io::Write;

use clap::Subcommand;
use futures_util::StreamExt;
use pifleet_controller::audit::Entry;

use super::{DataDirArg, open};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the whole chain; exits 1 and names the first broken entry if it was tampered with.
    Verify {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Print the log, oldest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        json: bool,
    },
}

/// The audit chain is broken.
#[derive(Debug, thiserror::Error)]
#[error("audit log broken: {0}")]
struct AuditBroken(pifleet_controller::audit::Break);

pub async fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify { dir } => {
            let o = open(&dir).await?;
            let check = o.store.verify_audit().await;
            o.store.close().await;
            let n = check?.result.map_err(|b| anyhow::anyhow!(AuditBroken(b)))?;
            println!("audit log intact: {n} entries verified");
        }
        AuditCmd::List { dir, json } => {
            let o = open(&dir).await?;
            let printed = list(&o.store, json).await;
            o.store.close().await;
            printed?;
        }
    }
    Ok(())
}

/// Prints every entry as it is read: tab-separated lines, or one pretty JSON array.
async fn list(store: &pifleet_controller::store::Store, json: bool) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut entries = std::pin::pin!(store.audit_stream());
    let mut first = true;
    while let Some(e) = entries.next().await {
        let e = e?;
        if json {
            out.write_all(if first { b"[\n" } else { b",\n" })?;
            write_json_element(&mut out, &e)?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.seq, e.at, e.actor, e.source, e.action, e.target, e.outcome
            )?;
        }
        first = false;
    }
    if json {
        out.write_all(if first { b"[]\n" } else { b"\n]\n" })?;
    }
    out.flush()?;
    Ok(())
}

/// An entry pretty-printed as an element of a pretty array (indented by two spaces), as
/// `serde_json::to_string_pretty` of the whole list would print it.
fn write_json_element(out: &mut impl Write, e: &Entry) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(e)?;
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.write_all(b"\n")?;
        }
        write!(out, "  {line}")?;
    }
    Ok(())
}

//! `pifleet-controller approval …`: the requests that wait for a second admin. The command
//! line lists them. Commands are decided by an admin signed in to the API or the dashboard;
//! a rollout can also be approved with `rollout approve`, as the OS user (`cli:USER`), who
//! must not be the one who asked.

use clap::Subcommand;
use pifleet_controller::store::now_ms;

use super::{DataDirArg, open};

#[derive(Subcommand)]
pub enum ApprovalCmd {
    /// List approval requests, newest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Only those still waiting for a decision.
        #[arg(long)]
        pending: bool,
        /// Print JSON, one request per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: ApprovalCmd) -> anyhow::Result<()> {
    match cmd {
        ApprovalCmd::List { dir, pending, json } => {
            let o = open(&dir).await?;
            let rows = o.store.list_approvals(pending, 500).await;
            o.store.close().await;
            let now = now_ms();
            for row in rows? {
                let v = row.view(now);
                if json {
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    println!(
                        "{}\t{}\t{}\t{}",
                        v.id,
                        v.status.as_str(),
                        v.requested_by,
                        v.summary
                    );
                }
            }
        }
    }
    Ok(())
}

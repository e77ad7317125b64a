//! `pifleet-controller rollout …`: take a release to the fleet in batches. Locally against
//! the data dir (the running controller's runner picks a change up within
//! `rollouts.poll_ms`), or against a remote controller with `--url` and an API token.
//! Both print the same views as the API returns.

use std::collections::BTreeMap;

use clap::Subcommand;
use pifleet_controller::approvals::Policy;
use pifleet_controller::commands::dispatch::Targets;
use pifleet_controller::model::labels;
use pifleet_controller::model::rollouts::RolloutSettingsBody;
use pifleet_controller::rollouts::service::{self, Action, Actor, RolloutRequest};
use pifleet_controller::rollouts::views;
use pifleet_controller::store::now_ms;
use serde_json::{Value, json};

use super::remote::{Remote, RemoteArgs};
use super::{DataDirArg, Usage, conclude, open};

/// The rollout's settings on the command line (defaults for what is left out).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SettingsArgs {
    /// Devices in the first batch (0 = no canary; default 1).
    #[arg(long)]
    canary: Option<u32>,
    /// Cumulative percentages of the later batches, the last 100 (default 10,50,100).
    #[arg(long, value_delimiter = ',')]
    batches: Option<Vec<u8>>,
    /// A batch passes with at least this share healthy, in percent (default 100).
    #[arg(long)]
    threshold: Option<u8>,
    /// Seconds a batch waits after its last device finished (default 0).
    #[arg(long)]
    bake: Option<u32>,
    /// Pause when failures reach this percentage of results… (default 20)
    #[arg(long)]
    abort_pct: Option<u8>,
    /// …once this many devices have a result (default 10).
    #[arg(long)]
    abort_min: Option<u32>,
    /// Seconds a device has to start downloading before it counts as unreachable.
    #[arg(long)]
    delivery_deadline: Option<u32>,
    /// Seconds from the download's start to a result before it counts as timed out.
    #[arg(long)]
    install_deadline: Option<u32>,
    /// Most devices queued or downloading at once (0 = no cap; default 50).
    #[arg(long)]
    max_downloads: Option<u32>,
    /// Send deploys only inside this window, e.g. "mon-fri 02:00-05:00 UTC+01:00".
    #[arg(long)]
    window: Option<String>,
}

impl SettingsArgs {
    fn body(&self) -> RolloutSettingsBody {
        RolloutSettingsBody {
            canary: self.canary,
            batches: self.batches.clone(),
            success_threshold_pct: self.threshold,
            bake_s: self.bake,
            abort_failure_pct: self.abort_pct,
            abort_min_results: self.abort_min,
            delivery_deadline_s: self.delivery_deadline,
            install_deadline_s: self.install_deadline,
            max_concurrent_downloads: self.max_downloads,
            maintenance_window: self.window.clone(),
        }
    }
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum RolloutCmd {
    /// Roll a release out to devices (by id or label); prints the plan, with the devices
    /// that cannot take it and why. Large rollouts wait for a second admin.
    Create {
        #[command(flatten)]
        dir: DataDirArg,
        /// The release's id…
        #[arg(long, required_unless_present = "app", conflicts_with = "app")]
        release: Option<i64>,
        /// …or the newest release of this app.
        #[arg(long)]
        app: Option<String>,
        /// A device (repeatable).
        #[arg(
            long = "device",
            required_unless_present = "labels",
            conflicts_with = "labels"
        )]
        devices: Vec<String>,
        /// Every device with this label, k=v (repeatable: all must match).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Only show the plan; store nothing.
        #[arg(long)]
        preview: bool,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List rollouts, newest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show a rollout: batches, devices (failure reasons and journal tails), history.
    Show {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Pause a running rollout; devices already sent the release finish.
    Pause {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Resume a paused rollout (after a health pause: accepting the failures so far).
    Resume {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Abort a rollout for good.
    Abort {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
        /// Send devices that took the release back to the release they ran before.
        #[arg(long)]
        revert: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Approve a rollout that waits for a second admin. Locally it is decided as the OS
    /// user (`cli:USER`), who must not be the one who asked; an API token cannot approve.
    Approve {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

fn local_targets(devices: Vec<String>, labels_args: &[String]) -> anyhow::Result<Targets> {
    if !devices.is_empty() {
        return Ok(Targets::Devices(devices));
    }
    let sel = labels::parse_pairs(labels_args)?;
    if sel.is_empty() {
        return Err(Usage("give --device or --label".into()).into());
    }
    Ok(Targets::Selector(sel))
}

pub async fn run(cmd: RolloutCmd) -> anyhow::Result<()> {
    match cmd {
        RolloutCmd::Create {
            dir,
            release,
            app,
            devices,
            labels: label_args,
            settings,
            preview,
            json,
            remote,
        } => {
            let body = settings.body();
            if let Some(r) = Remote::from_args(&remote)? {
                let selector: Option<BTreeMap<String, String>> = (!label_args.is_empty())
                    .then(|| labels::parse_pairs(&label_args))
                    .transpose()?;
                let req = json!({
                    "release_id": release,
                    "app": app,
                    "devices": (!devices.is_empty()).then_some(devices),
                    "selector": selector,
                    "settings": body,
                    "preview": preview,
                });
                let v = r
                    .send(
                        reqwest::Method::POST,
                        "/api/v1/rollouts",
                        &[],
                        Some(reqwest::Body::from(serde_json::to_vec(&strip_nulls(req))?)),
                        "application/json",
                    )
                    .await?;
                return print_created(&v, json);
            }
            let targets = local_targets(devices, &label_args)?;
            let settings = body.to_settings().map_err(Usage)?;
            let o = open(&dir).await?;
            let release_id = match (release, app) {
                (Some(id), _) => id,
                (None, Some(app)) => o
                    .store
                    .list_releases(Some(&app))
                    .await?
                    .into_iter()
                    .map(|r| (r.release, r.id))
                    .max()
                    .map(|(_, id)| id)
                    .ok_or_else(|| Usage(format!("app {app:?} has no release")))?,
                (None, None) => return Err(Usage("give --release or --app".into()).into()),
            };
            let actor = pifleet_controller::audit::cli_actor();
            let made = service::create(
                &o.store,
                &Policy::from(&o.cfg.approvals),
                RolloutRequest {
                    release_id,
                    targets,
                    settings,
                },
                Actor {
                    name: &actor,
                    user_id: None,
                },
                preview,
            )
            .await;
            let v = match &made {
                Ok(c) => {
                    let detail = match &c.rollout {
                        Some(r) => Some(views::detail(&o.store, r.id).await?),
                        None => None,
                    };
                    json!({
                        "rollout": detail,
                        "release_id": c.release.id,
                        "app": c.release.app,
                        "release": c.release.release,
                        "plan": views::plan_view(&c.plan),
                        "approval": c.approval.as_ref().map(|a| a.view(now_ms())),
                    })
                }
                Err(_) => Value::Null,
            };
            if preview {
                o.store.close().await;
                made?;
            } else {
                let target = v["rollout"]["rollout"]["id"].to_string();
                conclude(
                    o.store,
                    "rollout.create",
                    &target,
                    &release_id.to_string(),
                    made,
                )
                .await?;
            }
            print_created(&v, json)?;
        }
        RolloutCmd::List {
            dir,
            status,
            json,
            remote,
        } => {
            let v = if let Some(r) = Remote::from_args(&remote)? {
                let q: Vec<(&str, String)> = status.map(|s| ("status", s)).into_iter().collect();
                r.send(reqwest::Method::GET, "/api/v1/rollouts", &q, None, "")
                    .await?
            } else {
                let o = open(&dir).await?;
                let list = views::list(&o.store, status.as_deref(), None, 500).await;
                o.store.close().await;
                serde_json::to_value(list?)?
            };
            for r in v.as_array().into_iter().flatten() {
                if json {
                    println!("{r}");
                } else {
                    print_summary(r);
                }
            }
        }
        RolloutCmd::Show {
            dir,
            id,
            json,
            remote,
        } => {
            let v = if let Some(r) = Remote::from_args(&remote)? {
                r.send(
                    reqwest::Method::GET,
                    &format!("/api/v1/rollouts/{id}"),
                    &[],
                    None,
                    "",
                )
                .await?
            } else {
                let o = open(&dir).await?;
                let d = views::detail(&o.store, id).await;
                o.store.close().await;
                serde_json::to_value(d?)?
            };
            if json {
                println!("{v}");
            } else {
                print_detail(&v);
            }
        }
        RolloutCmd::Pause { dir, id, remote } => {
            act(dir, id, Action::Pause, remote, "pause").await?;
        }
        RolloutCmd::Resume { dir, id, remote } => {
            act(dir, id, Action::Resume, remote, "resume").await?;
        }
        RolloutCmd::Abort {
            dir,
            id,
            revert,
            remote,
        } => {
            act(dir, id, Action::Abort { revert }, remote, "abort").await?;
        }
        RolloutCmd::Approve { dir, id, remote } => {
            if let Some(r) = Remote::from_args(&remote)? {
                let v = r
                    .send(
                        reqwest::Method::POST,
                        &format!("/api/v1/rollouts/{id}/approve"),
                        &[],
                        None,
                        "",
                    )
                    .await?;
                print_summary(&v["rollout"]);
                return Ok(());
            }
            let o = open(&dir).await?;
            let actor = pifleet_controller::audit::cli_actor();
            let approved = match service::approval_of(&o.store, id).await {
                Ok(approval) => {
                    service::approve(
                        &o.store,
                        &approval,
                        Actor {
                            name: &actor,
                            user_id: None,
                        },
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let row = conclude(o.store, "rollout.approve", &id.to_string(), "", approved).await?;
            println!(
                "rollout {id}: {}",
                row.reason.as_deref().unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn act(
    dir: DataDirArg,
    id: i64,
    action: Action,
    remote: RemoteArgs,
    verb: &str,
) -> anyhow::Result<()> {
    if let Some(r) = Remote::from_args(&remote)? {
        let body = match action {
            Action::Abort { revert } => Some(reqwest::Body::from(serde_json::to_vec(
                &json!({ "revert": revert }),
            )?)),
            _ => None,
        };
        let v = r
            .send(
                reqwest::Method::POST,
                &format!("/api/v1/rollouts/{id}/{verb}"),
                &[],
                body,
                "application/json",
            )
            .await?;
        print_summary(&v["rollout"]);
        return Ok(());
    }
    let o = open(&dir).await?;
    let actor = pifleet_controller::audit::cli_actor();
    let r = service::act(&o.store, id, action, &actor).await;
    let row = conclude(o.store, &format!("rollout.{verb}"), &id.to_string(), "", r).await?;
    println!(
        "rollout {id} {}: {}",
        row.status,
        row.reason.as_deref().unwrap_or_default()
    );
    Ok(())
}

/// Drops null fields, so the API's defaults apply to what was not given.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn counts(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{n} {}", k.replace('_', " ")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_summary(r: &Value) {
    println!(
        "{}\t{}#{}\t{}\t{}\t{}\t{}",
        text(&r["id"]),
        text(&r["app"]),
        text(&r["release"]),
        text(&r["status"]),
        text(&r["batch_label"]),
        counts(&r["counts"]),
        text(&r["reason"])
    );
}

fn print_created(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{v}");
        return Ok(());
    }
    if v["rollout"].is_null() {
        println!(
            "preview of release {} of {}:",
            text(&v["release"]),
            text(&v["app"])
        );
    } else {
        print_summary(&v["rollout"]["rollout"]);
    }
    for d in v["plan"].as_array().into_iter().flatten() {
        match d["incompatible"].as_str() {
            Some(why) => println!("  {}\tincompatible: {why}", text(&d["device"])),
            None => println!(
                "  {}\tcurrent release {}",
                text(&d["device"]),
                text(&d["current_release"])
            ),
        }
    }
    if let Some(a) = v["approval"].as_object() {
        println!(
            "waiting for a second admin: approval {} ({})",
            text(&a["id"]),
            text(&a["summary"])
        );
    }
    Ok(())
}

fn print_detail(v: &Value) {
    print_summary(&v["rollout"]);
    for b in v["batches"].as_array().into_iter().flatten() {
        println!("  {}: {}", text(&b["label"]), counts(&b["counts"]));
    }
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "  {}\tbatch {}\t{}\t{}",
            text(&d["device"]),
            text(&d["batch"]),
            text(&d["state"]),
            d["reason"].as_str().unwrap_or_default()
        );
        if let Some(j) = d["journal"].as_str().filter(|j| !j.is_empty()) {
            for line in j.lines() {
                println!("    | {line}");
            }
        }
    }
    for e in v["events"].as_array().into_iter().flatten() {
        println!(
            "  [{}] {}: {}",
            text(&e["at"]),
            text(&e["actor"]),
            text(&e["text"])
        );
    }
}

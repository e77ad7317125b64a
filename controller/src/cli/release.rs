//! `pifleet-controller release …`: application releases made from an archive or a git
//! commit, listed, shown and deleted. Creation signs the manifest with the data dir's
//! release key, or with `--key FILE` for a key kept offline.

use std::path::PathBuf;

use clap::Subcommand;
use pifleet_controller::releases::{self, Input, IntakeOptions, NewRelease};
use pifleet_controller::setup;
use pifleet_controller::store::ReleaseRow;
use pifleet_shared::release::{HealthSpec, Probe};

use super::remote::{Remote, RemoteArgs};
use super::{DataDirArg, Usage, conclude, open};

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run; boxing clap's fields buys nothing
pub enum ReleaseCmd {
    /// Make a release of APP from an archive (.zip, .tar.gz or .tar) or a git commit.
    Create {
        #[command(flatten)]
        dir: DataDirArg,
        /// The app, as allowlisted on devices (`[apps.APP]`).
        app: String,
        /// The archive to release (or give --git and --rev).
        #[arg(required_unless_present = "git", conflicts_with = "git")]
        file: Option<PathBuf>,
        /// Human version text, e.g. 1.4.2.
        #[arg(long)]
        version: String,
        /// A git repository URL (https://, ssh://); releases the commit --rev.
        #[arg(long, requires = "rev")]
        git: Option<String>,
        /// The full commit SHA (40 or 64 hex digits).
        #[arg(long)]
        rev: Option<String>,
        /// Architectures it runs on (uname -m; repeatable); none: any.
        #[arg(long = "arch")]
        arches: Vec<String>,
        /// Allowlisted hooks to run: pre_start, post_switch (repeatable).
        #[arg(long = "hook")]
        hooks: Vec<String>,
        /// The unit must be active within this many seconds after the switch.
        #[arg(long, default_value_t = 60)]
        start_timeout: u32,
        /// Then stay active, without restarts, this many seconds.
        #[arg(long, default_value_t = 60)]
        soak: u32,
        /// A probe: GET http://127.0.0.1:PORT/PATH must answer 2xx (e.g. 8080/healthz).
        #[arg(long, value_name = "PORT/PATH", conflicts_with = "probe_command")]
        probe_http: Option<String>,
        /// A probe: the app's allowlisted probe command must exit 0.
        #[arg(long)]
        probe_command: bool,
        /// The probe must pass this many times in a row.
        #[arg(long, default_value_t = 3)]
        probe_passes: u32,
        /// Seconds between probes.
        #[arg(long, default_value_t = 5)]
        probe_interval: u32,
        /// Sign with this release key (PKCS#8 PEM) instead of the data dir's (local only).
        #[arg(long, conflicts_with = "url")]
        key: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// List releases, newest first.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show one release.
    Show {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
    },
    /// Delete a release (refused while a rollout uses it).
    Delete {
        #[command(flatten)]
        dir: DataDirArg,
        id: i64,
    },
}

fn probe(http: Option<&str>, command: bool) -> Result<Option<Probe>, Usage> {
    if command {
        return Ok(Some(Probe::Command));
    }
    let Some(spec) = http else { return Ok(None) };
    let (port, path) = spec.split_once('/').unwrap_or((spec, ""));
    let port: u16 = port.parse().map_err(|_| {
        Usage(format!(
            "--probe-http {spec:?}: expected PORT/PATH, e.g. 8080/healthz"
        ))
    })?;
    Ok(Some(Probe::Http {
        port,
        path: format!("/{path}"),
    }))
}

fn print(r: &ReleaseRow) {
    println!(
        "{}\t{}\t{}\t{}\t{}\t{} bytes",
        r.id, r.app, r.release, r.version, r.archive_sha256, r.archive_size
    );
}

/// A release as the API shows it, in the same columns as [`print`].
fn print_remote(v: &serde_json::Value) {
    println!(
        "{}\t{}\t{}\t{}\t{}\t{} bytes",
        v["id"],
        v["app"].as_str().unwrap_or_default(),
        v["release"],
        v["version"].as_str().unwrap_or_default(),
        v["archive_sha256"].as_str().unwrap_or_default(),
        v["archive_size"]
    );
}

pub async fn run(cmd: ReleaseCmd) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Create {
            dir,
            app,
            file,
            version,
            git,
            rev,
            arches,
            hooks,
            start_timeout,
            soak,
            probe_http,
            probe_command,
            probe_passes,
            probe_interval,
            key,
            remote,
        } => {
            if let Some(r) = Remote::from_args(&remote)? {
                let mut q: Vec<(&str, String)> = vec![
                    ("app", app),
                    ("version", version),
                    ("start_timeout_s", start_timeout.to_string()),
                    ("soak_s", soak.to_string()),
                    ("probe_passes", probe_passes.to_string()),
                    ("probe_interval_s", probe_interval.to_string()),
                ];
                if !arches.is_empty() {
                    q.push(("arches", arches.join(",")));
                }
                if !hooks.is_empty() {
                    q.push(("hooks", hooks.join(",")));
                }
                if let Some(p) = probe_http {
                    q.push(("probe_http", p));
                }
                if probe_command {
                    q.push(("probe_command", "true".into()));
                }
                let made = match (file, git, rev) {
                    (Some(path), None, _) => {
                        // Streamed from the file, never read whole into memory.
                        let f = tokio::fs::File::open(&path)
                            .await
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                        r.send(
                            reqwest::Method::POST,
                            "/api/v1/releases",
                            &q,
                            Some(reqwest::Body::from(f)),
                            "application/octet-stream",
                        )
                        .await?
                    }
                    (None, Some(url), Some(rev)) => {
                        let mut body: serde_json::Map<String, serde_json::Value> = q
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
                            .collect();
                        for k in [
                            "start_timeout_s",
                            "soak_s",
                            "probe_passes",
                            "probe_interval_s",
                        ] {
                            if let Some(n) = body
                                .get(k)
                                .and_then(|v| v.as_str())
                                .and_then(|v| v.parse::<u64>().ok())
                            {
                                body.insert(k.into(), n.into());
                            }
                        }
                        if body.contains_key("probe_command") {
                            body.insert("probe_command".into(), true.into());
                        }
                        body.insert("url".into(), url.into());
                        body.insert("rev".into(), rev.into());
                        r.send(
                            reqwest::Method::POST,
                            "/api/v1/releases/git",
                            &[],
                            Some(reqwest::Body::from(serde_json::to_vec(&body)?)),
                            "application/json",
                        )
                        .await?
                    }
                    _ => {
                        return Err(
                            Usage("give an archive, or --git URL with --rev SHA".into()).into()
                        );
                    }
                };
                print_remote(&made);
                return Ok(());
            }
            let health = HealthSpec {
                start_timeout_s: start_timeout,
                soak_s: soak,
                probe: probe(probe_http.as_deref(), probe_command)?,
                probe_passes,
                probe_interval_s: probe_interval,
            };
            let input = match (file, git, rev) {
                (Some(path), None, _) => Input::Upload {
                    file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    path,
                },
                (None, Some(url), Some(rev)) => Input::Git { url, rev },
                _ => {
                    return Err(Usage("give an archive, or --git URL with --rev SHA".into()).into());
                }
            };
            let o = open(&dir).await?;
            let signer = match &key {
                Some(path) => setup::load_release_signer(path)?,
                None => setup::release_signer(&o.dd)?,
            };
            if let Some(path) = &key
                && let Ok(pinned) = setup::release_public_key(&o.dd)
                && pinned.id != signer.id()
            {
                eprintln!(
                    "warning: {} is not the key in release.pub; devices trust only the release keys they pinned",
                    path.display()
                );
            }
            let opts = IntakeOptions::from(&o.cfg.releases);
            let new = NewRelease {
                app: app.clone(),
                version,
                arches,
                health,
                hooks,
                created_by: pifleet_controller::audit::cli_actor(),
            };
            let r = releases::create_release(&o.dd, &o.store, &signer, &opts, new, input).await;
            let (target, detail) = match &r {
                Ok(row) => (
                    format!("{}#{}", row.app, row.release),
                    format!("id={}; archive={}", row.id, row.archive_sha256),
                ),
                Err(_) => (app, String::new()),
            };
            let row = conclude(o.store, "release.create", &target, &detail, r).await?;
            print(&row);
        }
        ReleaseCmd::List { dir, app, remote } => {
            if let Some(r) = Remote::from_args(&remote)? {
                let q: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
                let list = r
                    .send(reqwest::Method::GET, "/api/v1/releases", &q, None, "")
                    .await?;
                for v in list.as_array().into_iter().flatten() {
                    print_remote(v);
                }
                return Ok(());
            }
            let o = open(&dir).await?;
            let rows = releases::list(&o.store, app.as_deref()).await;
            o.store.close().await;
            for r in rows? {
                print(&r);
            }
        }
        ReleaseCmd::Show { dir, id } => {
            let o = open(&dir).await?;
            let row = releases::show(&o.store, id).await;
            o.store.close().await;
            let r = row?;
            print(&r);
            println!("arches: {}", r.arches.join(", "));
            println!("hooks: {}", r.hooks.join(", "));
            println!("health: {:?}", r.health);
            println!("manifest: {} (key {})", r.manifest_sha256, r.key_id);
        }
        ReleaseCmd::Delete { dir, id } => {
            let o = open(&dir).await?;
            let r = releases::delete_release(&o.dd, &o.store, id).await;
            let detail = match &r {
                Ok(row) => format!("{}#{}", row.app, row.release),
                Err(_) => String::new(),
            };
            conclude(o.store, "release.delete", &id.to_string(), &detail, r).await?;
            println!("release {id} deleted");
        }
    }
    Ok(())
}
